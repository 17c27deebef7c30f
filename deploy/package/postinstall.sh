#!/bin/sh
# Create the xdoh system user from the shipped sysusers.d file, and let a
# running systemd see the new or changed unit. The service is not enabled:
# edit /etc/xdoh/xdoh.yaml first, then `systemctl enable --now xdoh`.
set -e
systemd-sysusers xdoh.conf
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload
fi
