#!/bin/sh
# What the real image's entrypoint does: default flags for the classic roles, the rest as is.
has() { flag=$1; shift; for a; do case $a in "$flag"|"$flag"=*) return 0;; esac; done; return 1; }
role=$1
[ $# -gt 0 ] && shift
case $role in
  master) exec /usr/bin/weed master -mdir=/data -volumePreallocate -volumeSizeLimitMB=1024 "$@" ;;
  volume) if has -max "$@"; then set -- -dir=/data "$@"; else set -- -dir=/data -max=0 "$@"; fi
          exec /usr/bin/weed volume "$@" ;;
  server) if has -volume.max "$@"; then set -- -dir=/data "$@"; else set -- -dir=/data -volume.max=0 "$@"; fi
          exec /usr/bin/weed server -master.volumePreallocate -master.volumeSizeLimitMB=1024 "$@" ;;
  filer)  exec /usr/bin/weed filer "$@" ;;
  s3)     exec /usr/bin/weed s3 "$@" ;;
  *)      exec /usr/bin/weed "$role" "$@" ;;
esac
