#!/bin/sh
# PID 1 of a portwatch kernel-matrix guest (built by xtask/src/kernels/initramfs.rs).
# Mounts what portwatch needs, runs the in-guest test, prints the verdict line the host
# looks for, and powers off. Should anything here die, the kernel panics, and with
# panic=-1 and qemu's -no-reboot that ends the VM too: the host then sees no verdict.
/bin/busybox --install -s /bin
export PATH=/bin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# Where portwatch looks first; it would mount it itself, but a missing mount should not
# be what this test exercises.
mount -t tracefs tracefs /sys/kernel/tracing
mkdir -p /tmp
ip link set lo up

# sock_diag for TCP (portwatch snapshot, and the startup snapshot of every tracing
# command) is a module in Debian's kernels; a host loads it on demand with modprobe.
for module in inet_diag tcp_diag; do
    if [ -f /lib/modules/$module.ko ]; then
        insmod /lib/modules/$module.ko || echo "guest: insmod $module failed"
    fi
done

echo "guest: booted Linux $(uname -r)"
/bin/xtask guest test --portwatch /bin/portwatch
status=$?
if [ "$status" -eq 0 ]; then
    echo "PORTWATCH-KERNEL-TEST: PASS"
else
    echo "PORTWATCH-KERNEL-TEST: FAIL (guest test exit status $status)"
fi
poweroff -f
