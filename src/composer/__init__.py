"""composer: build boot and runtime images of RPM-based operating systems."""

__version__ = "0.1.0"
