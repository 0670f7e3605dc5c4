#!/usr/bin/env bash
# Build the Debian package: release binary, man page and completions generated from the
# clap definition, then cargo-deb. Output: target/debian/handoff_*.deb
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked --quiet
cargo build --release --locked
mkdir -p target/assets
target/release/handoff man | gzip -9n > target/assets/handoff.1.gz
target/release/handoff completions bash > target/assets/handoff.bash
target/release/handoff completions zsh > target/assets/_handoff
target/release/handoff completions fish > target/assets/handoff.fish
cargo deb --no-build --no-strip -o target/debian/
ls -l target/debian/*.deb
