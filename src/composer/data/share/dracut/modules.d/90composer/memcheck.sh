#!/bin/sh
# composer: on a machine with less RAM than rd.composer.memory (MiB, the usable floor)
# say the boot will be slow; below rd.composer.memory.stop (the least it boots in) stop
# here with one line instead of an OOM kill or a long hang.
type getarg > /dev/null 2>&1 || . /lib/dracut-lib.sh

# (The unit tests point these elsewhere.)
: "${composer_iomem:=/proc/iomem}" "${composer_kmsg:=/dev/kmsg}"

composer_memcheck() {
    local need stop have line start end
    need=$(getarg rd.composer.memory=)
    case "$need" in
        '' | *[!0-9]* | 0) return 0 ;;
    esac
    stop=$(getarg rd.composer.memory.stop=)
    case "$stop" in
        '' | *[!0-9]*) stop=$need ;;
    esac
    # The machine's RAM as the firmware reports it: the top-level "System RAM"
    # ranges of /proc/iomem (MemTotal leaves out what the kernel keeps for itself).
    have=0
    while IFS= read -r line; do
        case "$line" in
            [0-9a-f]*" : System RAM")
                start=${line%%-*}
                end=${line#*-}
                end=${end%% *}
                have=$((have + (0x$end - 0x$start + 1) / 1024))
                ;;
        esac
    done < "$composer_iomem"
    have=$(((have + 512) / 1024))
    # Firmware keeps a few MiB of any machine's RAM for itself (UEFI more than BIOS):
    # those are not the machine's fault.
    [ $((have + 8)) -ge "$need" ] && return 0
    if [ $((have + 8)) -ge "$stop" ]; then
        echo "<3>composer: little memory: this machine has $have MiB of RAM, this system boots slowly below $need MiB; going on." > "$composer_kmsg"
        return 0
    fi
    echo "<2>composer: not enough memory: this machine has $have MiB of RAM, this system needs $stop MiB to boot; stopping." > "$composer_kmsg"
    if getargbool 0 rd.shell; then
        emergency_shell -n memcheck "not enough memory"
        return 0
    fi
    # Halt (systemd), or (dracut's own init) simply go no further: the line stays on
    # the screen and nothing else of the boot runs.
    [ -n "$DRACUT_SYSTEMD" ] && systemctl --no-block --force halt
    while :; do sleep 60; done
}

composer_memcheck
