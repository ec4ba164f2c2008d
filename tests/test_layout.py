"""DEVELOPERS.md's layout map names every package and module of the library: a new one that is not described there
fails here (the map is how a new maintainer finds their way)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_layout_map_names_every_package_and_module():
    text = (ROOT / "DEVELOPERS.md").read_text(encoding="utf-8")
    layout = text[text.index("## Layout"):text.index("## Environment")]
    missing = []
    for path in sorted((ROOT / "rankstack").rglob("*.py")):
        rel = path.relative_to(ROOT / "rankstack")
        if rel.name == "__init__.py" and len(rel.parts) == 1:
            continue
        if rel.name == "__init__.py":
            if f"{rel.parts[-2]}/" not in layout:
                missing.append(str(rel.parent) + "/")
        elif rel.name not in layout:
            missing.append(str(rel))
    assert not missing, f"DEVELOPERS.md's layout map does not mention {missing}"


def test_the_import_layers_hold_and_nothing_imports_in_a_circle():
    """The layering contract in pyproject.toml (import-linter), and no cycle among the library's modules at all,
    function-level imports included (grimp sees them): a lazy import that only hid a circle is a circle."""
    import shutil
    import subprocess
    import sys

    import grimp

    lint = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    r = subprocess.run([lint], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    graph = grimp.build_graph("rankstack")
    cycles = []
    for m in sorted(graph.modules):
        for other in graph.find_modules_directly_imported_by(m):
            if other != m and graph.chain_exists(importer=other, imported=m):
                cycles.append((m, other))
    assert not cycles, f"import cycles, e.g. {cycles[:5]}"
