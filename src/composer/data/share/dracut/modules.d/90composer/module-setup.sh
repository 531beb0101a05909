#!/bin/bash
# composer's own dracut module.
# - The RAM check (memcheck.sh): a machine with less RAM than the runtime needs stops
#   in the initramfs with one line saying how much it has and needs, before the live
#   image is fetched or mounted, instead of an OOM kill half-way through the boot and
#   a hang. The need comes from rd.composer.memory=MiB, which composer writes into the
#   initrds it ships (etc/cmdline.d) and the kernel command line can override (0: off).
# - Without systemd in the initramfs, udev's seat rules would still pull in loginctl
#   and with it libsystemd-shared (~5 MB in RAM): like dracut's own systemd module,
#   make it `true`. Installed first, it is what the later modules find.
# - With dracut's nbd module: a udev rule naming the network block device /dev/live-nbd
#   once it holds a squashfs (root=live:/dev/live-nbd). dmsquash-live's rule for a
#   /dev/nbd0 would fire at coldplug, on the empty device, before the network is up.

check() {
    return 255 # only when asked for (composer's 90-composer.conf does)
}

depends() {
    return 0
}

install() {
    inst_hook cmdline 01 "$moddir/memcheck.sh"
    if dracut_module_included "nbd"; then
        inst_simple "$moddir/90-composer-live-nbd.rules" /etc/udev/rules.d/90-composer-live-nbd.rules
    fi
    if ! dracut_module_included "systemd"; then
        ln_r "$(find_binary true)" "/usr/bin/loginctl"
    fi
}
