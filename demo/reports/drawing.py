"""Charts are drawn one at a time: matplotlib is not thread-safe (its font cache, text layout and renderer state
are shared by every figure), and two viewers may ask for a chart at once. Drawing holds this lock; figures are
plain `Figure` objects, never pyplot's global state."""

from __future__ import annotations

import threading

LOCK = threading.Lock()
