"""Tests of v2w-play (v2w_core/play): controls, sessions, sources, the served API and a real Chromium."""
