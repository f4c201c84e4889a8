"""``anomalymatch users``: people who may use the service, each with a personal token and a role.

    anomalymatch users add ann --role labeller    # prints ann's token once (only its hash is stored)
    anomalymatch users list
    anomalymatch users remove ann                 # her token stops working at once

Roles: viewer (candidates, images, retrain status), labeller (also post labels), admin (also bulk jobs).
The users live in the label store (``labelstore.url``, default ``<data dir>/labels.db``).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="YAML config (its labelstore section says where users live)")
    p.add_argument("--data-dir", help="project data folder (default .anomalymatch or $ANOMALYMATCH_HOME)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    add = sub.add_parser("add", help="add a user and print their token (shown once)")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=["viewer", "labeller", "admin"])
    remove = sub.add_parser("remove", help="remove a user (their token stops working)")
    remove.add_argument("name")
    listing = sub.add_parser("list", help="every user with role and when they were added")
    for parser in (add, remove, listing):
        _common(parser)


def run(args: argparse.Namespace) -> int:
    from anomalymatch.config import load_config
    from anomalymatch.labelstore import LabelStore
    from anomalymatch.users import add_user, list_users, remove_user

    config = load_config(args.config, {"data_dir": args.data_dir})
    with LabelStore.from_config(config.labelstore, config.data_path) as store:
        if args.action == "add":
            token = add_user(store, args.name, args.role)
            print(f"added {args.name} ({args.role}); their token, shown only now:\n{token}")
        elif args.action == "remove":
            remove_user(store, args.name)
            print(f"removed {args.name}")
        else:
            users = list_users(store)
            if not users:
                print("no users: the service runs on the shared token, or in open mode without one")
            for user, created in users:
                print(f"{user.name}\t{user.role.value}\t{created}")
    return 0
