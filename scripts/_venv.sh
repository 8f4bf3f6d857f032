# Shared by scripts/up and scripts/test: a .venv with the project installed, refreshed when
# pyproject.toml changes.
install_project() {
  local spec="$1" stamp=".venv/.installed-$(echo "$1" | tr -c 'a-z' '_')"
  if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
  fi
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e "$spec"
    touch "$stamp"
  fi
}
