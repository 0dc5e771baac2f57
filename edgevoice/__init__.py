"""edgevoice: microphone to a Realtime speech API, on devices nobody watches."""

__version__ = "0.1.0"
