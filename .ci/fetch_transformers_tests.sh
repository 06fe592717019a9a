#!/usr/bin/env bash
# Fetches transformers' own common test mixins for tests/test_transformers_battery.py: the tests/*.py files of the
# transformers sdist (test_modeling_common.py, test_configuration_common.py, test_processing_common.py,
# test_image_processing_common.py, test_pipeline_mixin.py, ...) at the installed version, from PyPI, into the
# gitignored .transformers_tests/hf_tests package. The sdist lacks tests/generation, tests/exporters, tests/utils and
# utils/; the battery stands in for what the mixins import from there (see its docstring).
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.transformers_tests
version=$(python -c "import transformers; print(transformers.__version__)")
if [ -f "$dest/VERSION" ] && [ "$(cat "$dest/VERSION")" = "$version" ]; then
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pip download -q --no-deps --no-binary :all: "transformers==$version" -d "$tmp"
tar -xzf "$tmp/transformers-$version.tar.gz" -C "$tmp" "transformers-$version/tests"
rm -rf "$dest"
mkdir -p "$dest/hf_tests"
cp "$tmp/transformers-$version/tests/"*.py "$dest/hf_tests/"
touch "$dest/hf_tests/__init__.py"
echo "$version" > "$dest/VERSION"
echo "transformers $version test mixins in $dest/hf_tests"
