"""The panel's Profiles tab: list, add, edit, delete, set default, test connection."""

from __future__ import annotations

import sys
from dataclasses import fields
from typing import TYPE_CHECKING, Any

import ipywidgets as W

from ..errors import ProfileError
from ..profiles import (
    LOCAL,
    Profile,
    default_profile_name,
    delete_profile,
    load_profiles,
    read_file,
    save_profile,
    set_default,
)
from . import _html as H
from ._kernel import route_to_subshell
from ._live import Background

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

if TYPE_CHECKING:
    from .panel import Panel

#: (field, kind, placeholder); kind: text | scheduler | check | lines | pairs
FORM = [
    ("name", "text", "letters, digits, _ . - (up to 64)"),
    ("scheduler", "scheduler", "local, slurm, sge, pbs, kubernetes …"),
    ("description", "text", ""),
    ("host", "text", "SSH host or ~/.ssh/config alias; empty: this machine"),
    ("user", "text", "default: ~/.ssh/config or your login"),
    ("port", "text", "22"),
    ("identity_file", "text", "~/.ssh/id_ed25519"),
    ("proxy_jump", "text", "user@bastion"),
    ("known_hosts", "text", "extra known_hosts file to trust"),
    ("accept_unknown_host", "check", ""),
    ("workdir", "text", "where job directories live (default ~/.clusterjupyter)"),
    ("python", "text", "interpreter on the cluster, e.g. /opt/conda/bin/python"),
    ("prelude", "lines", "shell lines run first, e.g. module load python"),
    ("env", "pairs", "KEY = value, one per line"),
    ("resources", "pairs", "defaults, one per line: time = 1h"),
    ("scheduler_options", "pairs", "scheduler settings, one per line"),
    ("ship_runner", "check", ""),
]
#: what the form calls each field (the profiles-file key is in the label's tooltip)
LABELS = {
    "name": "Name", "scheduler": "Scheduler", "description": "Description",
    "host": "SSH host", "user": "SSH user", "port": "SSH port",
    "identity_file": "SSH key file", "proxy_jump": "Jump host",
    "known_hosts": "Known hosts file", "accept_unknown_host": "Trust an unknown host key",
    "workdir": "Work directory", "python": "Python on the cluster",
    "prelude": "Shell lines before the job", "env": "Environment variables",
    "resources": "Default resources", "scheduler_options": "Scheduler options",
    "ship_runner": "Send the runner with each job",
}
DEFAULTS = {f.name: f.default for f in fields(Profile) if not callable(f.default_factory)}
LABEL = W.Layout(width="12.5em", flex="0 0 auto")


def _parse_pairs(text: str, field: str) -> dict[str, Any]:
    """``key = value`` lines to a dict; values are TOML when they parse as TOML, else strings."""
    out: dict[str, Any] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise ProfileError(f"line {n}: expected KEY = value, got {line!r}", field=field)
        try:
            out[key] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            out[key] = value
    return out


def _format_pairs(d: dict[str, Any]) -> str:
    import json

    lines = []
    for k, v in d.items():
        if isinstance(v, str):
            lines.append(f"{k} = {v}")
        else:
            lines.append(f"{k} = {json.dumps(v)}")
    return "\n".join(lines)


class ProfilesTab:
    """A profile list on the left, a validated form on the right."""

    def __init__(self, panel: Panel):
        from ..schedulers import available

        self.panel = panel
        self.loaded: str | None = None
        self._checker = Background("profile-check")
        self.select = W.Select(options=[], rows=12, layout=W.Layout(width="16em"))
        self.select.observe(self._selected, "value")
        self.new_button = W.Button(description="new", icon="plus", layout=W.Layout(width="auto"))
        self.delete_button = W.Button(description="delete", icon="trash",
                                      layout=W.Layout(width="auto"))
        self.default_button = W.Button(description="make default", icon="star",
                                       layout=W.Layout(width="auto"))
        self.new_button.on_click(lambda _b: self.new())
        self.delete_button.on_click(lambda _b: self.delete())
        self.default_button.on_click(lambda _b: self.make_default())

        self.inputs: dict[str, W.Widget] = {}
        self.errors: dict[str, W.HTML] = {}
        rows = []
        for name, kind, hint in FORM:
            if kind == "scheduler":
                box: W.Widget = W.Combobox(options=sorted(available()), ensure_option=False,
                                           placeholder=hint, layout=W.Layout(width="22em"))
            elif kind == "check":
                box = W.Checkbox(value=bool(DEFAULTS.get(name)), indent=False,
                                 layout=W.Layout(width="22em"))
            elif kind in ("lines", "pairs"):
                box = W.Textarea(placeholder=hint, rows=2, layout=W.Layout(width="22em"))
            else:
                box = W.Text(placeholder=hint, layout=W.Layout(width="22em"))
            err = W.HTML(layout=W.Layout(flex="1 1 auto"))
            self.inputs[name] = box
            self.errors[name] = err
            label = (f'<span title="{H.esc(name)} in profiles.toml" class="cj-label">'
                     f"{H.esc(LABELS.get(name, name))}</span>")
            rows.append(W.HBox([W.HTML(label, layout=LABEL), box, err],
                               layout=W.Layout(align_items="center")))
        self.save_button = W.Button(description="save", icon="save", button_style="primary",
                                    layout=W.Layout(width="auto"))
        self.test_button = W.Button(description="test connection", icon="plug",
                                    layout=W.Layout(width="auto"))
        self.save_button.on_click(lambda _b: self.save())
        self.test_button.on_click(lambda _b: self.test())
        route_to_subshell(self.test_button, panel.kernel)
        self.message = W.HTML()
        self.health = W.HTML()
        self.path = W.HTML()
        left = W.VBox([self.select, W.HBox([self.new_button, self.delete_button]),
                       self.default_button], layout=W.Layout(margin="0 1em 0 0"))
        right = W.VBox([*rows, W.HBox([self.save_button, self.test_button]), self.message,
                        self.health])
        self.widget = W.VBox([W.HBox([left, right]), self.path])
        self.reload()
        # open on the profile %%cluster uses (a form ready to test), not on an empty one
        try:
            default = default_profile_name()
        except ProfileError:
            default = LOCAL
        if default in [o[1] for o in self.select.options]:
            self.load(default)
        else:
            self.new()

    # -- list ---------------------------------------------------------------------------------
    def reload(self, select: str | None = None) -> None:
        from ..paths import profiles_path

        try:
            profiles = load_profiles()
            default = default_profile_name()
            in_file = set(read_file().get("profiles", {}))
        except ProfileError as e:
            self.say(str(e), "error")
            return
        options = []
        for name, p in profiles.items():
            label = name + (" (built-in)" if name == LOCAL and name not in in_file else "")
            label += f" — {p.scheduler}" + ("  ★" if name == default else "")
            options.append((label, name))
        with self.panel.lock:
            self.select.unobserve(self._selected, "value")
            try:
                self.select.options = options
                names = [o[1] for o in options]
                want = select if select in names else self.loaded
                self.select.value = want if want in names else None
            finally:
                self.select.observe(self._selected, "value")
            self.path.value = (f'<span style="color:{H.MUTED}">profiles file: '
                               f"<code>{H.esc(profiles_path())}</code></span>")
        self.panel.profiles_changed()

    def _selected(self, change: Any) -> None:
        if change["new"]:
            self.load(change["new"])

    # -- form ---------------------------------------------------------------------------------
    def new(self) -> None:
        """An empty form for a new profile."""
        self.loaded = None
        with self.panel.lock:
            self.select.unobserve(self._selected, "value")
            self.select.value = None
            self.select.observe(self._selected, "value")
            for name, kind, _ in FORM:
                box = self.inputs[name]
                box.value = bool(DEFAULTS.get(name)) if kind == "check" else ""
            self.inputs["scheduler"].value = "local"
            self.clear_errors()
            self.health.value = ""

    def load(self, name: str) -> None:
        """Fill the form from the profile called ``name``."""
        try:
            p = load_profiles()[name]
        except (ProfileError, KeyError) as e:
            self.say(str(e), "error")
            return
        self.loaded = name
        d = p.to_dict()
        with self.panel.lock:
            for field, kind, _ in FORM:
                value = d.get(field)
                box = self.inputs[field]
                if kind == "check":
                    box.value = bool(getattr(p, field))
                elif kind == "lines":
                    box.value = "\n".join(value or [])
                elif kind == "pairs":
                    box.value = _format_pairs(value or {})
                else:
                    box.value = "" if value is None else str(value)
            self.clear_errors()
            self.health.value = ""
            if self.select.value != name:
                self.select.value = name

    def form_data(self) -> tuple[str, dict[str, Any]]:
        """The profile name and its body from the form (raises ProfileError naming a field)."""
        name = self.inputs["name"].value.strip()
        data: dict[str, Any] = {}
        for field, kind, _ in FORM:
            if field == "name":
                continue
            value = self.inputs[field].value
            if kind == "check":
                if value != DEFAULTS.get(field):
                    data[field] = bool(value)
            elif kind == "lines":
                lines = [ln.rstrip() for ln in value.splitlines() if ln.strip()]
                if lines:
                    data[field] = lines
            elif kind == "pairs":
                pairs = _parse_pairs(value, field)
                if pairs:
                    data[field] = pairs
            elif value.strip():
                data[field] = value.strip()
        if not name:
            raise ProfileError("a profile needs a name", field="name")
        return name, data

    def profile(self) -> Profile:
        """The validated profile the form describes."""
        name, data = self.form_data()
        return Profile.from_dict(name, data)

    def clear_errors(self) -> None:
        for err in self.errors.values():
            err.value = ""
        self.message.value = ""

    def show_error(self, e: ProfileError) -> None:
        """Put ``e`` next to the field it names (or in the message line)."""
        field = e.field
        if field not in self.errors:
            # a resource or scheduler option: the textarea it came from
            for name in ("resources", "scheduler_options", "env"):
                try:
                    keys = _parse_pairs(self.inputs[name].value, name)
                except ProfileError:
                    keys = {}
                if field in keys:
                    field = name
                    break
        text = str(e)
        if e.profile and text.startswith("profile "):
            text = text.split(": ", 1)[-1]
        with self.panel.lock:
            if field in self.errors:
                self.errors[field].value = H.message(f"✗ {text}", "error")
                self.message.value = H.message(f"not saved: {field} is invalid", "error")
            else:
                self.message.value = H.message(f"not saved: {e}", "error")

    def say(self, text: str, kind: str = "info") -> None:
        with self.panel.lock:
            self.message.value = H.message(text, kind)

    # -- actions ------------------------------------------------------------------------------
    def save(self) -> bool:
        """Validate the form and write the profile to the profiles file."""
        self.clear_errors()
        try:
            profile = self.profile()
            save_profile(profile)
        except ProfileError as e:
            self.show_error(e)
            return False
        except Exception as e:
            self.say(f"not saved: {type(e).__name__}: {e}", "error")
            return False
        renamed = self.loaded not in (None, profile.name)
        self.loaded = profile.name
        self.reload(select=profile.name)
        self.say(f"saved profile {profile.name!r}"
                 + (" (as a new profile; the old one is kept)" if renamed else ""), "ok")
        return True

    def delete(self) -> None:
        name = self.select.value or self.inputs["name"].value.strip()
        if not name:
            self.say("choose a profile to delete", "error")
            return
        try:
            delete_profile(name)
        except ProfileError as e:
            self.say(str(e) + (" (the built-in local profile cannot be deleted)"
                               if name == LOCAL else ""), "error")
            return
        self.reload()
        self.new()
        self.say(f"deleted profile {name!r}", "ok")

    def make_default(self) -> None:
        name = self.select.value
        if not name:
            self.say("choose a profile first", "error")
            return
        try:
            set_default(name)
        except ProfileError as e:
            self.say(str(e), "error")
            return
        self.reload(select=name)
        self.say(f"%%cluster now runs on {name!r} by default", "ok")

    def test(self) -> bool:
        """Run the health check of the form's profile (saved or not) in a worker thread."""
        from .health import check_profile

        self.clear_errors()
        try:
            profile = self.profile()
        except ProfileError as e:
            self.show_error(e)
            return False

        def work() -> None:
            result = check_profile(profile)
            self.show_health(result)

        def failed(e: BaseException) -> None:
            with self.panel.lock:
                self.health.value = H.message(f"check failed: {type(e).__name__}: {e}", "error")

        with self.panel.lock:
            self.health.value = H.message(f"testing {profile.name}…")
        return self._checker.submit(work, on_error=failed)

    def show_health(self, result: dict[str, Any]) -> None:
        rows = []
        for s in result["steps"]:
            mark = (f'<span style="color:{H.OK}">✓</span>' if s["ok"]
                    else f'<span style="color:{H.ERROR}">✗</span>')
            rows.append(H.grid([mark, H.esc(s["name"]), H.esc(f"{s['seconds']:.2f}s"),
                                H.titled(s["detail"], s["detail"])],
                               "1.2em 6em 4em minmax(10em,1fr)"))
        table = result.get("environment", {}).get("table")
        if table:   # versions that differ between this kernel and the jobs' interpreter
            rows.append(f"<pre>{H.esc(table)}</pre>")
        head = H.message(result["message"], "ok" if result["ok"] else "error")
        value = (f"<div class=\"cj-health cj-health-{'ok' if result['ok'] else 'failed'}\">"
                 f"{head} <span style=\"color:{H.MUTED}\">({result['seconds']:.2f}s)</span>"
                 + "".join(rows) + "</div>")
        with self.panel.lock:
            self.health.value = value

    def close(self) -> None:
        pass
