#!/usr/bin/env bash
# macOS launcher (Finder runs .command files in Terminal): the same steps as run_linux.sh.
exec "$(dirname "$0")/run_linux.sh" "$@"
