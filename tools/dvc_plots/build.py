"""Rebuild template.html: DVC's plot page with Vega, Vega-Lite and Vega-Embed inlined.

`dvc plots show` and `dvc plots diff` load these scripts from a CDN by default, which leaves the page
blank without network access. `.dvc/config` points `plots.html_template` at the template this script
writes, so the pages render offline. The versions are the ones DVC's own page asks for; each tarball is
checked against its pinned SHA-256 before use. Run it only to change the versions:

    python tools/dvc_plots/build.py
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import urllib.request
from pathlib import Path

REGISTRY = "https://registry.npmjs.org"
PACKAGES = (
    # (package, version, script inside the tarball, sha256 of the tarball)
    ("vega", "5.20.2", "package/build/vega.min.js", "d77deab01d6104b1239228720721f93003e60797d2faced7ffdd759fa70f989d"),
    (
        "vega-lite",
        "5.2.0",
        "package/build/vega-lite.min.js",
        "f64ca4745f043447ac86b67dc9e9592ec2b85ac8b8dafc35faf970f142463e4b",
    ),
    (
        "vega-embed",
        "6.18.2",
        "package/build/vega-embed.min.js",
        "93aeee312e92077b0252ef026c0fe0ec8fa430c19825aeada6cd3a6804e68e1b",
    ),
)
TEMPLATE = Path(__file__).with_name("template.html")

PAGE = """<!DOCTYPE html>
<html>
<head>
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>Loopline plots</title>
{scripts}
    <style>
        table {{ border-spacing: 15px; }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def fetch(package: str, version: str, member: str, sha256: str) -> tuple[str, str]:
    """The script and its licence text from one pinned npm tarball."""
    url = f"{REGISTRY}/{package}/-/{package}-{version}.tgz"
    with urllib.request.urlopen(url, timeout=60) as response:
        payload = response.read()
    digest = hashlib.sha256(payload).hexdigest()
    if digest != sha256:
        raise SystemExit(f"{url}: sha256 {digest} does not match the pinned {sha256}")
    with tarfile.open(fileobj=io.BytesIO(payload), mode="r:gz") as tar:
        script = tar.extractfile(member).read().decode("utf-8")  # type: ignore[union-attr]
        licence = tar.extractfile("package/LICENSE").read().decode("utf-8")  # type: ignore[union-attr]
    if "</script" in script:
        raise SystemExit(f"{package}: the script contains '</script' and cannot be inlined")
    return script, licence


def build() -> str:
    blocks = []
    for package, version, member, sha256 in PACKAGES:
        script, licence = fetch(package, version, member, sha256)
        blocks.append(f"<!-- {package} {version}\n{licence.replace('--', '- -')}-->")
        blocks.append(f'<script type="text/javascript">\n{script}\n</script>')
    # The page's own placeholders are literal text that DVC replaces; the scripts are not formatted.
    return PAGE.format(scripts="\n".join(blocks))


if __name__ == "__main__":
    TEMPLATE.write_text(build(), encoding="utf-8")
    print(f"wrote {TEMPLATE} ({TEMPLATE.stat().st_size:,} bytes)")
