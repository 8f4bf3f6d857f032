# Shared by scripts/up and scripts/test: a .venv with the project installed, refreshed when
# pyproject.toml changes. pip's output goes to .venv/install.log and is shown only on failure.
install_project() {
  local spec="$1" stamp=".venv/.installed-$(echo "$1" | tr -c 'a-z' '_')"
  if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
  fi
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "installing Maestro into .venv ..." >&2
    if ! { .venv/bin/python -m pip install --upgrade pip \
           && .venv/bin/python -m pip install -e "$spec"; } > .venv/install.log 2>&1; then
      cat .venv/install.log >&2
      echo "installation failed (log: .venv/install.log)" >&2
      return 1
    fi
    touch "$stamp"
  fi
}
