#!/bin/bash
# composer's RAM check: a machine with less RAM than the runtime needs stops in the
# initramfs with one line saying how much it has and needs, before the live image is
# fetched or mounted, instead of an OOM kill half-way through the boot and a hang.
# The need comes from rd.composer.memory=MiB, which composer writes into the initrds
# it ships (etc/cmdline.d) and which the kernel command line can override (0: off).

check() {
    return 255 # only when asked for (composer's 90-composer.conf does)
}

depends() {
    return 0
}

install() {
    inst_hook cmdline 01 "$moddir/composer-memcheck.sh"
}
