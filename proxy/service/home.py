"""The state directory (EGRESS_HOME): master key, grant key, store, CA, runtime files."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from proxy.connectors import check_workspace
from proxy.errors import ConfigError
from proxy.grants import GrantKey
from proxy.secrets import DEFAULT_WORKSPACE, MasterKey
from proxy.service import ca
from proxy.service.files import write_atomic
from proxy.store import Store, mask_url, open_store, sqlite_path


@dataclass(frozen=True)
class Home:
    root: Path
    env: Mapping[str, str]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Home:
        env = os.environ if env is None else env
        root = env.get("EGRESS_HOME") or os.path.join(os.path.expanduser("~"), ".egress")
        return cls(Path(root).absolute(), env)

    @property
    def workspace(self) -> str:
        """The workspace commands act on: ``--workspace`` / EGRESS_WORKSPACE, else ``default``."""
        return check_workspace(
            self.env.get("EGRESS_WORKSPACE") or DEFAULT_WORKSPACE,
            "workspace (--workspace or EGRESS_WORKSPACE)",
        )

    def in_workspace(self, workspace: str | None) -> Home:
        """This home acting on ``workspace`` (None: unchanged)."""
        return self if workspace is None else Home(self.root, {**self.env, "EGRESS_WORKSPACE": workspace})

    @property
    def database_url(self) -> str:
        return self.env.get("EGRESS_DATABASE_URL") or f"sqlite:///{self.root / 'egress.db'}"

    @property
    def key_path(self) -> Path:
        return self.root / "master.key"

    @property
    def grant_key_path(self) -> Path:
        return self.root / "grant.key"

    @property
    def ca_dir(self) -> Path:
        return self.root / "ca"

    @property
    def ca_cert(self) -> Path:
        return self.ca_dir / ca.CERT_FILE

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def journal_dir(self) -> Path:
        """Where proxies journal counts not yet in the store (``proxy.journal``), one directory per
        store, so a proxy replays only journals meant for the store it writes to."""
        digest = hashlib.sha256(mask_url(self.database_url).encode()).hexdigest()[:12]
        return self.root / "journal" / digest

    @property
    def addr_file(self) -> Path:
        return self.run_dir / "proxy.addr"

    def master_key(self) -> MasterKey:
        """The key from EGRESS_MASTER_KEY, EGRESS_MASTER_KEY_FILE or master.key."""
        if text := self.env.get("EGRESS_MASTER_KEY"):
            return MasterKey.from_text(text, "EGRESS_MASTER_KEY")
        if path := self.env.get("EGRESS_MASTER_KEY_FILE"):
            return MasterKey.from_file(Path(path))
        if self.key_path.exists():
            return MasterKey.from_file(self.key_path)
        raise ConfigError(
            f"no master key: set EGRESS_MASTER_KEY or EGRESS_MASTER_KEY_FILE, or run `egress init` "
            f"to create {self.key_path}"
        )

    def grant_key(self) -> GrantKey:
        path = self.grant_key_path
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise ConfigError(f"no grant key at {path}: run `egress init`") from None
        except OSError as e:
            raise ConfigError(f"{path}: unusable grant key ({e.strerror})") from None
        return GrantKey.from_text(text, str(path))

    def new_grant_key(self) -> None:
        """Write a fresh random grant key (0600), replacing any previous one."""
        write_atomic(self.grant_key_path, GrantKey.generate_text().encode(), private=True)

    def store(self, *, create: bool = False, lazy: bool = False, shared: bool = False) -> Store:
        """``lazy``: a database store that may be down now (a running proxy keeps trying);
        ``shared``: one database connection for every such store of this process."""
        return open_store(self.database_url, create=create, lazy=lazy, shared=shared)

    def init(self) -> list[str]:
        """Create what is missing (idempotent); return what was created."""
        created: list[str] = []
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.run_dir.mkdir(exist_ok=True)
        path = sqlite_path(self.database_url)
        had_store = path is None or path.exists()
        store = self.store(create=True)
        if not had_store:
            created.append(f"store {store.location}")
        has_key = (
            "EGRESS_MASTER_KEY" in self.env or "EGRESS_MASTER_KEY_FILE" in self.env or self.key_path.exists()
        )
        if not has_key:
            sealed = store.connectors()
            if sealed:
                store.close()
                raise ConfigError(
                    f"{store.location} holds {len(sealed)} sealed secret(s) but no master key was "
                    f"found: restore {self.key_path} or set EGRESS_MASTER_KEY (a new key would "
                    "not open them)"
                )
            _, text = MasterKey.generate()
            write_atomic(self.key_path, (text + "\n").encode(), private=True)
            created.append(f"master key {self.key_path}")
        store.close()
        self.master_key()  # fail now, clearly, if the configured key is unusable
        if not self.grant_key_path.exists():
            self.new_grant_key()
            created.append(f"grant key {self.grant_key_path}")
        if ca.ensure_ca(self.ca_dir):
            created.append(f"CA {self.ca_cert}")
        return created

    def require_initialised(self, *, need_ca: bool = False, need_grant_key: bool = False) -> None:
        """Refuse, naming the home, unless ``egress init`` ran: reading commands must never create state."""
        missing = []
        path = sqlite_path(self.database_url)
        if path is not None and not path.exists():
            missing.append(f"no store at {path}")
        if need_ca and not self.ca_cert.exists():
            missing.append(f"no CA certificate at {self.ca_cert}")
        if need_grant_key and not self.grant_key_path.exists():
            missing.append(f"no grant key at {self.grant_key_path}")
        if missing:
            raise ConfigError(
                f"EGRESS_HOME {self.root} is not initialised ({'; '.join(missing)}): run `egress init`"
            )
