"""What a build leaves in the output directory: big initrd, media, manifest."""
