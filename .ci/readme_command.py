"""Print set-up command N (1 or 2) of README.md, verbatim: CI runs exactly what a user copies."""

import re
import sys
from pathlib import Path

text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
setup = text.split("\n## Set-up\n", 1)[1].split("\n## ", 1)[0]
block = re.search(r"```bash\n(.*?)```", setup, re.S).group(1)
commands = [line for line in block.splitlines() if line.strip() and not line.startswith("#")]
print(commands[int(sys.argv[1]) - 1])
