"""``cli-help``: the ``--help`` of ``ppl-diffusion`` (or of one of its commands), rendered from the parser itself.

In a MyST page::

    ```{cli-help} train
    ```

so the command reference cannot drift from the code.
"""

from __future__ import annotations

import os

from docutils import nodes
from sphinx.util.docutils import SphinxDirective


class CliHelp(SphinxDirective):
    optional_arguments = 1

    def run(self) -> list[nodes.Node]:
        from ppl_diffusion.cli import build_parser

        parser = build_parser()
        if self.arguments:
            name = self.arguments[0]
            sub = next(a for a in parser._actions if a.dest == "command")  # the subparsers action
            if name not in sub.choices:
                raise self.error(f"cli-help: unknown command {name!r}; known: {', '.join(sub.choices)}")
            parser = sub.choices[name]
        old = os.environ.get("COLUMNS")
        os.environ["COLUMNS"] = "100"  # the same line breaks on every machine
        try:
            text = parser.format_help()
        finally:
            if old is None:
                os.environ.pop("COLUMNS")
            else:
                os.environ["COLUMNS"] = old
        block = nodes.literal_block(text, text, language="text")
        return [block]


def setup(app):
    app.add_directive("cli-help", CliHelp)
    return {"version": "1", "parallel_read_safe": True}
