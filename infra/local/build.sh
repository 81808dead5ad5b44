#!/usr/bin/env bash
# `make build`: release Lambda artifacts for every package under functions/, with cargo-lambda
# and zig from .local/tools-venv. Output: <target dir>/lambda/<binary>/bootstrap.
#
# x86_64 only. arm64 cannot be built on these machines: the aarch64 standard library cannot be
# installed offline (rustup has no registry mirror here). template.yaml keeps the architecture
# switchable; an arm64 build needs a machine where `rustup target add aarch64-unknown-linux-gnu`
# works, and then `cargo lambda build --release --arm64`.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

bash "$LOCAL_SCRIPTS_DIR/install.sh" uv tools
# cargo-lambda runs zig as `python3 -m ziglang` when there is no `zig` on PATH.
export PATH="$TOOLS_VENV/bin:$PATH"

mapfile -t packages < <("$LOCAL_PYTHON" -c '
import sys, tomllib
for path in sys.argv[1:]:
    with open(path, "rb") as f:
        print(tomllib.load(f)["package"]["name"])
' functions/*/Cargo.toml)
((${#packages[@]})) || die "no packages under functions/"

package_args=()
for package in "${packages[@]}"; do
  package_args+=(--package "$package")
done
mapfile -t ci_flags < <(cargo_ci_flags)

started_at="$(now)"
step cargo lambda build --release --x86-64 "${ci_flags[@]}" "${package_args[@]}"
log "built ${packages[*]} in $(elapsed_since "$started_at"); artifacts under $(cargo_target_dir)/lambda/"
