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
