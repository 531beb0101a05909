"""Filesystem and archive images, all built without loop devices or mounts."""
