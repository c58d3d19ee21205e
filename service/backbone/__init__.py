"""Backbones carry events between services and gateway instances.

Importing this package never imports aio_pika; `service.backbone.amqp` does, lazily.
"""

from service.backbone.base import Backbone, NotificationHistory, OnEvent

__all__ = ["Backbone", "NotificationHistory", "OnEvent"]
