"""Summaries of software packages that are not machine learning: traffic from outside the model's domain.

"A fast JSON parser for Rust", "CLI to manage dotfiles": what a package index holds, and what a model that
tags ML projects should not be trusted on. Standard library only (both venvs and the stack tests use it).
"""

from __future__ import annotations

import random

LANGUAGES = [
    "Rust", "Go", "Python", "JavaScript", "TypeScript", "Ruby", "Elixir", "Haskell", "C++", "Zig", "Java", "Kotlin",
    "Swift", "PHP", "Lua", "OCaml", "Dart", "Nim", "Clojure", "Scala",
]  # fmt: skip
THINGS = [
    "JSON parser", "YAML linter", "HTTP client", "dotfiles manager", "password manager", "static site generator",
    "markdown editor", "log rotator", "cron scheduler", "PDF renderer", "SQL query builder", "ORM", "web server",
    "terminal emulator", "file watcher", "bookmark manager", "backup tool", "DNS resolver", "TOML library",
    "package manager", "build system", "test runner", "code formatter", "HTTP router", "template engine",
    "WebSocket server", "rate limiter", "connection pool", "date and time library", "UUID generator", "CSV reader",
    "INI parser", "shell prompt", "git hooks manager", "clipboard manager", "window manager", "email client",
    "RSS reader", "URL shortener", "load balancer", "reverse proxy", "secrets vault client", "diff tool",
    "archive extractor", "font renderer", "audio player", "podcast downloader", "invoice generator",
    "calendar sync tool", "todo list app", "note taking app", "spreadsheet library", "chess engine",
    "SSH config manager", "disk usage analyzer", "process monitor", "port scanner",
]  # fmt: skip
ADJECTIVES = [
    "A fast", "A tiny", "A minimal", "A blazing fast", "A simple", "A modern", "A lightweight", "A small",
    "A batteries-included", "A zero-dependency", "A safe", "An async", "A pure", "An ergonomic", "A portable",
]  # fmt: skip
FOR_LANGUAGE = ["for {lang}", "written in {lang}", "in pure {lang}", "for {lang} projects", "with {lang} bindings"]
TOOLS = [
    "CLI to manage {thing}", "Command-line tool to {verb}", "Terminal UI to {verb}", "Daemon that {verbs}",
    "Browser extension to {verb}", "Editor plugin to {verb}",
]  # fmt: skip
VERBS = [
    ("manage dotfiles", "manages dotfiles"),
    ("rename files in bulk", "renames files in bulk"),
    ("sync folders between machines", "syncs folders between machines"),
    ("format source code", "formats source code"),
    ("benchmark HTTP endpoints", "benchmarks HTTP endpoints"),
    ("track time spent on tasks", "tracks time spent on tasks"),
    ("clean up old git branches", "cleans up old git branches"),
    ("convert units", "converts units"),
    ("generate changelogs from commits", "generates changelogs from commits"),
    ("search files by content", "searches files by content"),
    ("schedule reminders", "schedules reminders"),
    ("mirror package registries", "mirrors package registries"),
    ("audit dependencies for licenses", "audits dependencies for licenses"),
    ("minify CSS and HTML", "minifies CSS and HTML"),
    ("serve a folder over HTTP", "serves a folder over HTTP"),
]
MANAGED = [
    "dotfiles", "SSH keys", "environment variables", "git worktrees", "bookmarks", "browser tabs", "npm scripts",
    "Docker volumes", "cron jobs", "TLS certificates", "feature flags", "invoices", "passwords",
]  # fmt: skip
FEATURES = [
    "Zero dependencies and a single static binary.", "Supports streaming input and trailing commas.",
    "Colored output, shell completions and a config file.", "Works on Linux, macOS and Windows.",
    "Async I/O with connection reuse and retries.", "Respects .gitignore and skips hidden files.",
    "Plugin system with hot reload.", "Ships with sane defaults and a man page.",
    "About twice as fast as the standard library.", "Fully documented, MIT licensed.",
    "Includes a REPL and a language server.", "Keeps a local cache and works offline.",
    "Configurable with TOML, YAML or environment variables.", "No unsafe code, fuzzed in CI.",
    "Integrates with systemd and launchd.", "Exports to CSV, JSON and SQLite.",
]  # fmt: skip


def package_summaries(count: int, seed: int = 0) -> list[dict[str, str]]:
    """`count` made-up package summaries (`title`, `description`), varied, the same for the same seed."""
    rng = random.Random(seed)
    summaries = []
    for _ in range(count):
        if rng.random() < 0.6:
            language = rng.choice(LANGUAGES)
            title = f"{rng.choice(ADJECTIVES)} {rng.choice(THINGS)} {rng.choice(FOR_LANGUAGE).format(lang=language)}"
        else:
            verb, verbs = rng.choice(VERBS)
            title = rng.choice(TOOLS).format(thing=rng.choice(MANAGED), verb=verb, verbs=verbs)
        description = " ".join(rng.sample(FEATURES, rng.randint(1, 3)))
        summaries.append({"title": title, "description": description})
    return summaries
