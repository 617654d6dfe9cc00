"""`squall admin`: subjects, their namespaces and keys, straight in the store (as wskadmin does).

    squall admin subject create NAME [--namespace NS ...]   prints the new key uuid:key
    squall admin subject list
    squall admin subject rotate NAME                          prints the new key (same uuid)
    squall admin subject block NAME | unblock NAME | delete NAME
    squall admin namespace add NAME NS                        another namespace for a subject
    squall admin namespace list NAME

Keys are stored only as salted hashes: a key is shown once, when created or rotated. Running
controllers keep accepting a replaced key until their authentication cache expires
(SQUALL_CONTROLLER_AUTH_CACHE_S).
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys

from controller.auth import make_subject, new_credentials
from squall.config import SquallConfig
from squall.store import Store, Subject


class AdminError(Exception):
    pass


async def _find(store: Store, name: str) -> Subject:
    for subject in await store.list_subjects():
        if subject.subject == name:
            return subject
    raise AdminError(f"no subject named {name!r}")


async def run(args: argparse.Namespace, cfg: SquallConfig) -> list[str]:
    store = await Store.connect(cfg.cassandra, create_schema=True)
    try:
        if args.what == "subject":
            return await _subject(store, args)
        return await _namespace(store, args)
    finally:
        await store.close()


async def _subject(store: Store, args: argparse.Namespace) -> list[str]:
    if args.action == "list":
        return ["\t".join([s.subject, ",".join(s.namespaces), s.uuid] + (["blocked"] if s.blocked else []))
                for s in sorted(await store.list_subjects(), key=lambda s: s.subject)]
    if args.action == "create":
        if any(s.subject == args.name for s in await store.list_subjects()):
            raise AdminError(f"subject {args.name!r} exists already")
        uuid, key = new_credentials()
        await store.put_subject(make_subject(args.name, tuple(args.namespace or [args.name]), f"{uuid}:{key}"))
        return [f"{uuid}:{key}"]
    subject = await _find(store, args.name)
    if args.action == "rotate":
        _, key = new_credentials()
        fresh = make_subject(subject.subject, subject.namespaces, f"{subject.uuid}:{key}")
        await store.put_subject(dataclasses.replace(fresh, blocked=subject.blocked))
        return [f"{subject.uuid}:{key}"]
    if args.action in ("block", "unblock"):
        await store.put_subject(dataclasses.replace(subject, blocked=args.action == "block"))
        return [f"{subject.subject} {args.action}ed"]
    await store.delete_subject(subject.uuid)
    return [f"{subject.subject} deleted"]


async def _namespace(store: Store, args: argparse.Namespace) -> list[str]:
    subject = await _find(store, args.name)
    if args.action == "add":
        if args.namespace in subject.namespaces:
            raise AdminError(f"{subject.subject} already has namespace {args.namespace!r}")
        await store.put_subject(dataclasses.replace(subject, namespaces=(*subject.namespaces, args.namespace)))
        return [f"{subject.subject}: {', '.join((*subject.namespaces, args.namespace))}"]
    return list(subject.namespaces)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="squall admin", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_subparsers(dest="what", required=True)
    subject = what.add_parser("subject").add_subparsers(dest="action", required=True)
    create = subject.add_parser("create")
    create.add_argument("name")
    create.add_argument("--namespace", action="append", help="its namespaces (default: one named like it)")
    subject.add_parser("list")
    for action in ("rotate", "block", "unblock", "delete"):
        subject.add_parser(action).add_argument("name")
    namespace = what.add_parser("namespace").add_subparsers(dest="action", required=True)
    add = namespace.add_parser("add")
    add.add_argument("name")
    add.add_argument("namespace")
    namespace.add_parser("list").add_argument("name")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    try:
        from squall.stack import running_config
        lines = asyncio.run(run(args, running_config()))
    except AdminError as exc:
        print(f"squall admin: {exc}", file=sys.stderr)
        return 1
    for line in lines:
        print(line)
    return 0
