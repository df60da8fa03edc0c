"""Open the built site in headless Chromium, as a reader would, and check what only a browser shows.

For each page given (default: the front page, a tutorial and an API page) it saves a screenshot and the DOM
after the page's scripts ran, and checks that MathJax typeset the math (``mjx-container`` elements, no raw
``\\(`` left in the text, no ``$`` of a formula MyST did not parse left in the prose, no formula MathJax could not
parse), that the copy buttons were added to the code blocks, that the figures loaded
(every ``<img>`` has a non-zero natural width) and that the sidebar's navigation links are there::

    python -m sphinx -W -n -b html docs docs/_build/html
    python docs/_tools/browser_check.py docs/_build/html --out docs/_build/screenshots

Needs Chromium (Debian: ``apt install chromium``). Exit status 1 if any check fails.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

DEFAULT_PAGES = ["index.html", "tutorials/01_ddpm_as_a_program.html", "api/generated/ppl_diffusion.diffusion.html"]

# run after the page's own scripts: records what the reader sees, in attributes the dumped DOM keeps
PROBE = """
<script>
window.addEventListener('load', () => setTimeout(() => {
  const imgs = [...document.images];
  document.body.setAttribute('data-check', JSON.stringify({
    math: document.querySelectorAll('mjx-container').length,
    raw_math: (document.body.innerText.match(/\\\\\\(|\\\\\\[/g) || []).length,
    math_errors: [...document.querySelectorAll('mjx-container')].filter(c => c.querySelector('mjx-merror')).length,
    raw_dollars: (() => {  // '$' in the page's text outside code and typeset math
      const walk = document.createTreeWalker(document.querySelector('article') || document.body, NodeFilter.SHOW_TEXT);
      let node, n = 0;
      while ((node = walk.nextNode()))
        if (!node.parentElement.closest('pre, code, mjx-container, script, style'))
          n += (node.data.match(/\\$/g) || []).length;
      return n;
    })(),
    copy_buttons: document.querySelectorAll('button.copybtn').length,
    code_blocks: document.querySelectorAll('div.highlight pre').length,
    images: imgs.length,
    broken_images: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length,
    nav_links: document.querySelectorAll('.sidebar-tree a.reference').length,
  }));
}, 3000));
</script>
"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return name
    sys.exit("browser_check: no Chromium on PATH; install it (Debian: apt install chromium)")


def check_page(site: Path, page: str, out: Path, browser: str) -> list[str]:
    src = site / page
    if not src.exists():
        return [f"{page}: not built"]
    probed = src.with_name(src.stem + ".browser-check.html")
    probed.write_text(src.read_text().replace("</body>", PROBE + "</body>"))
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=8000"]
    try:
        dom = subprocess.run([*flags, "--dump-dom", probed.as_uri()], capture_output=True, text=True, timeout=120).stdout
        shot = out / (page.replace("/", "_").removesuffix(".html") + ".png")
        subprocess.run([*flags, "--window-size=1280,1800", f"--screenshot={shot}", probed.as_uri()],
                       capture_output=True, timeout=120)
    finally:
        probed.unlink()
    found = re.search(r"data-check=\"([^\"]*)\"", dom)
    if not found:
        return [f"{page}: the probe did not run (no data-check in the DOM)"]
    import html
    import json

    c = json.loads(html.unescape(found.group(1)))
    print(f"{page}: {c}; screenshot {shot}")
    problems = []
    if c["raw_math"]:
        problems.append(f"{page}: {c['raw_math']} math delimiters left untypeset (MathJax did not run)")
    if c["math_errors"]:
        problems.append(f"{page}: {c['math_errors']} formulas MathJax could not parse (hover them on the page)")
    if c["raw_dollars"]:
        problems.append(f"{page}: {c['raw_dollars']} '$' left in the prose (a formula MyST did not read as math)")
    if c["code_blocks"] and c["copy_buttons"] < c["code_blocks"]:
        problems.append(f"{page}: {c['copy_buttons']} copy buttons for {c['code_blocks']} code blocks")
    if c["broken_images"]:
        problems.append(f"{page}: {c['broken_images']} of {c['images']} images did not load")
    if c["nav_links"] < 5:
        problems.append(f"{page}: only {c['nav_links']} navigation links in the sidebar")
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("site", type=Path, help="the built site, e.g. docs/_build/html")
    p.add_argument("pages", nargs="*", default=DEFAULT_PAGES, help="pages relative to the site")
    p.add_argument("--out", type=Path, default=None, help="folder for the screenshots (default: SITE/../screenshots)")
    args = p.parse_args(argv)
    out = args.out or args.site.parent / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    browser = chromium()
    problems = [msg for page in args.pages for msg in check_page(args.site.resolve(), page, out, browser)]
    for msg in problems:
        print("FAIL " + msg)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
