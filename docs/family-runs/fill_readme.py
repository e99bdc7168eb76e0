"""Put docs/family-runs/table.py's output between the family-table markers of notes/readme-heads.md."""

import re
import subprocess
import sys
from pathlib import Path

here = Path(__file__).parent
readme = here.parent / "readme-heads.md"
table = subprocess.run([sys.executable, str(here / "table.py")], check=True, capture_output=True, text=True).stdout
text = readme.read_text()
text = re.sub(r"(<!-- family-table:[^>]*-->\n).*?(<!-- /family-table -->)", lambda m: m.group(1) + table + m.group(2),
              text, flags=re.S)
readme.write_text(text)
