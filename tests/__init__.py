"""Squall's tests. What more than one test module needs to find lives here."""
import os
import shutil

# Apache's wsk CLI: $SQUALL_WSK, or `wsk` on PATH; None when neither (its tests then skip).
WSK = os.environ.get("SQUALL_WSK") or shutil.which("wsk")
