"""realtime-gateway: a WebSocket gateway fed by RabbitMQ."""

__version__ = "0.1.0"
