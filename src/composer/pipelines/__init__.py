"""The pipelines: each output kind (runtime, boot.iso, netboot, lorax, mkksiso) as its list of named stages."""
