// The reference integration's "User data" and "Actions" examples, and the
// `my-todo-lists` query, as an authkit-host handler in JavaScript. It does
// exactly what guest-examples/rust/user-data does; the tests hold both to the
// same conformance scenario.
//
// Events keep the app's own `users` table (indexed by `authId`, the WorkOS
// user id) in step with user.created / user.updated / user.deleted and give
// every new user a `todoLists` document. Actions deny registrations from
// @gmail.com and sign-ins of users whose app document says "banned": true.
//
// WIT conventions in JavaScript (componentize-js): an import that returns
// `result<T, E>` returns T or throws an error whose `payload` is E; an export
// that returns `result<T, string>` returns T, or throws a string for the error.

import * as db from 'authkit:handler/db@0.1.0';
import * as users from 'authkit:handler/users@0.1.0';
import { log } from 'authkit:handler/log@0.1.0';

/** Runs a host call; a refusal becomes the handler's error text. */
function host(call) {
  try {
    return call();
  } catch (e) {
    throw describe(e);
  }
}

/** A host error as text: `{"tag":"not-found"}`, for example. */
function describe(e) {
  if (e && typeof e === 'object' && 'payload' in e) return JSON.stringify(e.payload);
  return String(e);
}

function findAppUser(id) {
  const page = host(() => db.find('users', 'authId', JSON.stringify(id), 1, undefined));
  return page.documents[0];
}

/** The app's view of a WorkOS user. */
function appFields(user) {
  const name = `${user.firstName ?? ''} ${user.lastName ?? ''}`.trim();
  return { email: user.email ?? null, name };
}

function created(id) {
  const user = host(() => users.get(id));
  if (!user) {
    // Deleted before this (late) create was handled: nothing to keep.
    log('info', `user ${id} is already deleted`);
    return;
  }
  const existing = findAppUser(id);
  if (existing) {
    host(() => db.patch('users', existing.id, JSON.stringify(appFields(user))));
    return;
  }
  host(() => db.insert('users', JSON.stringify({ ...appFields(user), authId: id })));
  const list = { name: `${user.firstName ?? 'Your'}'s Todo List`, userId: id };
  host(() => db.insert('todoLists', JSON.stringify(list)));
}

function updated(id) {
  const existing = findAppUser(id);
  if (!existing) {
    log('warn', `User not found: ${id}`);
    return;
  }
  const user = host(() => users.get(id));
  if (!user) return;
  host(() => db.patch('users', existing.id, JSON.stringify(appFields(user))));
}

function deleted(id) {
  const existing = findAppUser(id);
  if (!existing) {
    log('warn', `User not found: ${id}`);
    return;
  }
  host(() => db.delete('users', existing.id));
}

export const schema = {
  indexes() {
    return [
      { table: 'users', field: 'authId' },
      { table: 'todoLists', field: 'userId' },
    ];
  },
};

export const events = {
  handle(event) {
    const user = event.user;
    if (!user) {
      log('info', `${event.eventType} ${event.id}: nothing to do`);
      return;
    }
    switch (event.eventType) {
      case 'user.created':
        return created(user.id);
      case 'user.updated':
        return updated(user.id);
      case 'user.deleted':
        return deleted(user.id);
    }
  },
};

export const actions = {
  authenticate(ctx) {
    // If the app's table cannot be read, this throws: the call traps and the
    // host sends its fallback verdict.
    const doc = findAppUser(ctx.user.id);
    if (doc && JSON.parse(doc.body).banned === true) {
      return { tag: 'deny', val: 'This account has been suspended.' };
    }
    return { tag: 'allow' };
  },
  registerUser(ctx) {
    if (ctx.userData.email.toLowerCase().endsWith('@gmail.com')) {
      return { tag: 'deny', val: 'Gmail accounts are not allowed' };
    }
    return { tag: 'allow' };
  },
};

/** Every todo list of the user, oldest first, each with its id. */
function todoListsOf(userId) {
  const lists = [];
  let cursor;
  do {
    const page = host(() => db.find('todoLists', 'userId', JSON.stringify(userId), 100, cursor));
    for (const doc of page.documents) lists.push({ ...JSON.parse(doc.body), id: doc.id });
    cursor = page.nextCursor;
  } while (cursor !== undefined);
  return lists;
}

export const queries = {
  run(name, argsJson, caller) {
    if (name === 'my-todo-lists') {
      if (!caller) throw 'sign in to see your todo lists';
      return JSON.stringify({ lists: todoListsOf(caller.user.id) });
    }
    throw `there is no query ${JSON.stringify(name)}; this handler answers my-todo-lists`;
  },
};
