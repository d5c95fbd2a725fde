"""The reference integration's "User data" and "Actions" examples, and the
`my-todo-lists` query, as an authkit-host handler in Python. It does exactly
what guest-examples/rust/user-data does; the tests hold both to the same
conformance scenario.

Events keep the app's own `users` table (indexed by `authId`, the WorkOS user
id) in step with user.created / user.updated / user.deleted and give every new
user a `todoLists` document. Actions deny registrations from @gmail.com and
sign-ins of users whose app document says "banned": true.

WIT conventions in Python (componentize-py): an import that returns
`result<T, E>` returns T or raises `Err(E)`; an export that returns
`result<T, string>` returns T, or raises `Err("message")`.
"""

import json
from typing import List, Optional

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports import actions, queries, schema
from wit_world.imports import db, log, users


def host(call):
    """Runs a host call; a refusal becomes the handler's error text."""
    try:
        return call()
    except Err as e:
        raise Err(repr(e.value))


def find_app_user(user_id: str) -> Optional[db.Document]:
    page = host(lambda: db.find("users", "authId", json.dumps(user_id), 1, None))
    return page.documents[0] if page.documents else None


def app_fields(user) -> dict:
    """The app's view of a WorkOS user."""
    name = f"{user.first_name or ''} {user.last_name or ''}".strip()
    return {"email": user.email, "name": name}


def created(user_id: str) -> None:
    user = host(lambda: users.get(user_id))
    if user is None:
        # Deleted before this (late) create was handled: nothing to keep.
        log.log(log.Level.INFO, f"user {user_id} is already deleted")
        return
    existing = find_app_user(user_id)
    if existing is not None:
        host(lambda: db.patch("users", existing.id, json.dumps(app_fields(user))))
        return
    host(lambda: db.insert("users", json.dumps({**app_fields(user), "authId": user_id})))
    todo_list = {"name": f"{user.first_name or 'Your'}'s Todo List", "userId": user_id}
    host(lambda: db.insert("todoLists", json.dumps(todo_list)))


def updated(user_id: str) -> None:
    existing = find_app_user(user_id)
    if existing is None:
        log.log(log.Level.WARN, f"User not found: {user_id}")
        return
    user = host(lambda: users.get(user_id))
    if user is None:
        return
    host(lambda: db.patch("users", existing.id, json.dumps(app_fields(user))))


def deleted(user_id: str) -> None:
    existing = find_app_user(user_id)
    if existing is None:
        log.log(log.Level.WARN, f"User not found: {user_id}")
        return
    host(lambda: db.delete("users", existing.id))


def todo_lists_of(user_id: str) -> List[dict]:
    """Every todo list of the user, oldest first, each with its id."""
    lists, cursor = [], None
    while True:
        page = host(lambda: db.find("todoLists", "userId", json.dumps(user_id), 100, cursor))
        lists.extend({**json.loads(doc.body), "id": doc.id} for doc in page.documents)
        cursor = page.next_cursor
        if cursor is None:
            return lists


class Schema(exports.Schema):
    def indexes(self) -> List[schema.Index]:
        return [schema.Index(table="users", field="authId"), schema.Index(table="todoLists", field="userId")]


class Events(exports.Events):
    def handle(self, event) -> None:
        user = event.user
        if user is None:
            log.log(log.Level.INFO, f"{event.event_type} {event.id}: nothing to do")
            return
        handler = {"user.created": created, "user.updated": updated, "user.deleted": deleted}.get(event.event_type)
        if handler is not None:
            handler(user.id)


class Actions(exports.Actions):
    def authenticate(self, ctx: actions.AuthenticationContext) -> actions.Verdict:
        # If the app's table cannot be read, this raises: the call traps and
        # the host sends its fallback verdict.
        doc = find_app_user(ctx.user.id)
        if doc is not None and json.loads(doc.body).get("banned") is True:
            return actions.Verdict_Deny("This account has been suspended.")
        return actions.Verdict_Allow()

    def register_user(self, ctx: actions.RegistrationContext) -> actions.Verdict:
        if ctx.user_data.email.lower().endswith("@gmail.com"):
            return actions.Verdict_Deny("Gmail accounts are not allowed")
        return actions.Verdict_Allow()


class Queries(exports.Queries):
    def run(self, name: str, args_json: str, caller: Optional[queries.Caller]) -> str:
        if name == "my-todo-lists":
            if caller is None:
                raise Err("sign in to see your todo lists")
            return json.dumps({"lists": todo_lists_of(caller.user.id)})
        raise Err(f"there is no query {json.dumps(name)}; this handler answers my-todo-lists")
