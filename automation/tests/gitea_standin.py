"""A Gitea stand-in: a threaded HTTP server with in-memory state for one repository.

It answers the operations the automation uses the way Gitea v1.25 does,
including what ``../shared/gitea/README.md`` says the spec does not make
obvious:
- ``POST .../branches`` answers 409 for an existing branch, but the existence
  check and the insert are apart (``branch_window`` seconds, or a rendezvous of
  several creators), so simultaneous creations from the same SHA all get 201;
- no "unassigned" filter; ``labels`` matches issues carrying ALL named labels,
  unknown names are dropped (and with none left, nothing is filtered);
- ``PATCH`` of an issue's assignees replaces the list;
- combined status: ``state: ""`` without statuses, warning counts as success,
  statuses are paginated;
- self-review (approve / request changes on your own PR) is 422, and so is
  REQUEST_CHANGES or COMMENT without a body, or a review request for the author;
- merge: 200 merged, 201 auto-merge scheduled, 405 already merged, 409 head
  out of date;
- page size 30 by default, capped at 50, ``X-Total-Count`` on lists;
- ``null`` for absent optional values.

Every request and answer is checked against the swagger spec (``contract``);
what does not fit is collected in ``violations`` for the tests to assert on.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from automation.tests.swagger_contract import Contract

DEFAULT_PAGE = 30
MAX_PAGE = 50


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def fake_sha(*parts: object) -> str:
    return hashlib.sha1("/".join(map(str, parts)).encode()).hexdigest()


class HttpError(Exception):
    def __init__(self, status: int, message: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Fault:
    """An injected failure: answer ``status`` instead, before or after doing the work."""

    method: str
    pattern: re.Pattern
    status: int
    after: bool = False
    times: int = 1


@dataclass
class PullRecord:
    number: int
    author: str
    title: str
    head_ref: str
    head_sha: str
    base_ref: str = "main"
    body: str = ""
    state: str = "open"
    merged: bool = False
    merged_at: str | None = None
    closed_at: str | None = None
    requested: list[str] = field(default_factory=list)
    files: list[dict] = field(default_factory=list)
    auto_merge: bool = False
    created_at: str = field(default_factory=_now)


class GiteaStandIn:
    """State and behaviour of one Gitea repository, served over HTTP by ``serve()``."""

    def __init__(self, *, owner: str = "oib", name: str = "aitbc", contract: Contract | None = None) -> None:
        self.owner = owner
        self.name = name
        self.contract = contract
        self.lock = threading.RLock()
        self.users: dict[str, dict] = {}
        self.tokens: dict[str, str] = {}
        self.labels: dict[str, dict] = {}
        self.issues: dict[int, dict] = {}
        self.pulls: dict[int, PullRecord] = {}
        self.comments: dict[int, dict] = {}
        self.reviews: dict[int, dict] = {}
        self.statuses: dict[str, dict[str, dict]] = {}
        self.files: dict[str, dict[str, bytes]] = {}
        self.hooks: dict[int, dict] = {}
        self.numbers = itertools.count(1)
        self.comment_ids = itertools.count(1001)
        self.review_ids = itertools.count(1)
        self.status_ids = itertools.count(1)
        self.other_ids = itertools.count(1)
        main_sha = fake_sha("main")
        self.branches: dict[str, str] = {"main": main_sha}
        self.files[main_sha] = {}
        self.branch_window = 0.0
        self.rendezvous: dict[str, threading.Barrier] = {}
        self.faults: list[Fault] = []
        # Called (without the lock) after a branch creation answered 201: lets a
        # test play the sibling acting between two of the agent's requests.
        self.on_branch_created: Callable[[str], None] | None = None
        self.violations: list[str] = []
        self.requests: list[tuple[str, str, int, str]] = []
        self.stats: Counter = Counter()
        self.server: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    # ------------------------------------------------------------------ server

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def repo(self) -> str:
        return f"{self.owner}/{self.name}"

    def serve(self) -> GiteaStandIn:
        standin = self

        class Handler(_Handler):
            pass

        Handler.standin = standin
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, name="gitea-standin", daemon=True
        )
        self.thread.start()
        return self

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    # ------------------------------------------------------------------ test set-up helpers

    def add_user(self, login: str, token: str | None = None) -> str:
        with self.lock:
            self.users[login] = {"id": len(self.users) + 1, "login": login}
            token = token or f"token-{login}"
            self.tokens[token] = login
            return token

    def tokens_for(self, login: str) -> str:
        with self.lock:
            return next(token for token, user in self.tokens.items() if user == login)

    def add_label(self, name: str) -> dict:
        with self.lock:
            label = {"id": len(self.labels) + 1, "name": name, "color": "00aabb"}
            self.labels[name] = label
            return label

    def add_issue(self, title: str, *, labels: list[str] = (), author: str | None = None, assignees=()) -> int:
        with self.lock:
            for name in labels:
                if name not in self.labels:
                    self.add_label(name)
            number = next(self.numbers)
            self.issues[number] = {
                "number": number,
                "id": 5000 + number,
                "title": title,
                "body": "",
                "author": author or next(iter(self.users), "owner"),
                "labels": list(labels),
                "assignees": list(assignees),
                "state": "open",
                "created_at": _now(),
                "updated_at": _now(),
                "closed_at": None,
                "is_pull": False,
            }
            return number

    def commit(self, files: dict[str, str | bytes], *, parent: str | None = None) -> str:
        """A commit with ``files`` on top of ``parent`` (main by default); returns its SHA."""
        with self.lock:
            base = dict(self.files[parent or self.branches["main"]])
            for path, content in files.items():
                base[path] = content.encode() if isinstance(content, str) else content
            sha = fake_sha("commit", next(self.other_ids), sorted(files))
            self.files[sha] = base
            return sha

    def add_pull(
        self,
        *,
        author: str,
        head_ref: str,
        files: dict[str, str | None],
        title: str = "A change",
        statuses: dict[str, str] | None = None,
    ) -> int:
        """An open PR from ``head_ref`` changing ``files`` (None deletes a file)."""
        with self.lock:
            changes = {p: c for p, c in files.items() if c is not None}
            sha = self.commit(changes)
            for path, content in files.items():
                if content is None:
                    self.files[sha].pop(path, None)
            self.branches[head_ref] = sha
            number = next(self.numbers)
            self.issues[number] = {
                "number": number,
                "id": 5000 + number,
                "title": title,
                "body": "",
                "author": author,
                "labels": [],
                "assignees": [],
                "state": "open",
                "created_at": _now(),
                "updated_at": _now(),
                "closed_at": None,
                "is_pull": True,
            }
            main = self.files[self.branches["main"]]
            changed = []
            for path, content in files.items():
                status = "deleted" if content is None else ("modified" if path in main else "added")
                changed.append({"filename": path, "status": status})
            self.pulls[number] = PullRecord(
                number=number, author=author, title=title, head_ref=head_ref, head_sha=sha, files=changed
            )
            for context, state in (statuses or {}).items():
                self.set_status(sha, context, state)
            return number

    def push(self, number: int, files: dict[str, str]) -> str:
        """A new head commit on a PR."""
        with self.lock:
            pr = self.pulls[number]
            sha = self.commit(files, parent=pr.head_sha)
            pr.head_sha = sha
            self.branches[pr.head_ref] = sha
            known = {f["filename"] for f in pr.files}
            for path in files:
                if path not in known:
                    pr.files.append({"filename": path, "status": "added"})
            return sha

    def set_status(self, sha: str, context: str, state: str) -> None:
        with self.lock:
            self.statuses.setdefault(sha, {})[context] = {
                "id": next(self.status_ids),
                "context": context,
                "status": state,
                "description": f"{context} {state}",
                "created_at": _now(),
            }

    def close_pull(self, number: int, *, merged: bool) -> None:
        with self.lock:
            pr = self.pulls[number]
            pr.state = "closed"
            pr.closed_at = _now()
            self.issues[number]["state"] = "closed"
            self.issues[number]["closed_at"] = pr.closed_at
            if merged:
                pr.merged = True
                pr.merged_at = pr.closed_at
                self.branches["main"] = pr.head_sha

    def inject(self, method: str, path_regex: str, status: int, *, after: bool = False, times: int = 1) -> None:
        """Answer the next ``times`` matching requests with ``status`` (after doing the work if ``after``)."""
        with self.lock:
            self.faults.append(Fault(method, re.compile(path_regex), status, after, times))

    def claim_comments(self, number: int) -> list[dict]:
        with self.lock:
            return sorted(
                (c for c in self.comments.values() if c["issue"] == number and "aitbc:claim" in c["body"]),
                key=lambda c: c["id"],
            )

    def issue_comments(self, number: int) -> list[dict]:
        with self.lock:
            return sorted((c for c in self.comments.values() if c["issue"] == number), key=lambda c: c["id"])

    def calls(self, method: str | None = None, pattern: str = "") -> list[tuple[str, str, int, str]]:
        with self.lock:
            return [r for r in self.requests if (method is None or r[0] == method) and re.search(pattern, r[1])]

    # ------------------------------------------------------------------ JSON shapes

    def user_json(self, login: str) -> dict:
        user = self.users.get(login, {"id": 999, "login": login})
        return {
            "id": user["id"],
            "login": login,
            "login_name": "",
            "source_id": 0,
            "full_name": "",
            "email": f"{login}@noreply.example.org",
            "avatar_url": f"{self.url}/avatars/{login}",
            "html_url": f"{self.url}/{login}",
            "language": "",
            "is_admin": False,
            "last_login": _now(),
            "created": "2026-01-01T00:00:00Z",
            "restricted": False,
            "active": True,
            "prohibit_login": False,
            "location": "",
            "website": "",
            "description": "",
            "visibility": "public",
            "followers_count": 0,
            "following_count": 0,
            "starred_repos_count": 0,
        }

    def repo_json(self) -> dict:
        return {
            "id": 1,
            "owner": self.user_json(self.owner),
            "name": self.name,
            "full_name": self.repo,
            "description": "",
            "empty": False,
            "private": False,
            "fork": False,
            "template": False,
            "parent": None,
            "mirror": False,
            "size": 0,
            "html_url": f"{self.url}/{self.repo}",
            "url": f"{self.url}/api/v1/repos/{self.repo}",
            "clone_url": f"{self.url}/{self.repo}.git",
            "default_branch": "main",
            "archived": False,
            "created_at": "2026-01-01T00:00:00Z",
            "updated_at": _now(),
            "has_issues": True,
            "has_pull_requests": True,
            "internal_tracker": None,
            "external_tracker": None,
        }

    def label_json(self, name: str) -> dict:
        label = self.labels[name]
        return {
            "id": label["id"],
            "name": name,
            "exclusive": False,
            "is_archived": False,
            "color": label["color"],
            "description": "",
            "url": f"{self.url}/api/v1/repos/{self.repo}/labels/{label['id']}",
        }

    def issue_json(self, number: int) -> dict:
        issue = self.issues[number]
        assignees = [self.user_json(login) for login in issue["assignees"]]
        pull = self.pulls.get(number)
        return {
            "id": issue["id"],
            "url": f"{self.url}/api/v1/repos/{self.repo}/issues/{number}",
            "html_url": f"{self.url}/{self.repo}/issues/{number}",
            "number": number,
            "user": self.user_json(issue["author"]),
            "original_author": "",
            "original_author_id": 0,
            "title": issue["title"],
            "body": issue["body"],
            "ref": "",
            "assets": [],
            "labels": [self.label_json(n) for n in issue["labels"]],
            "milestone": None,
            "assignee": assignees[0] if assignees else None,
            # Real Gitea sends null, not [], for an issue without assignees.
            "assignees": assignees or None,
            "state": issue["state"],
            "is_locked": False,
            "comments": sum(1 for c in self.comments.values() if c["issue"] == number),
            "created_at": issue["created_at"],
            "updated_at": issue["updated_at"],
            "closed_at": issue["closed_at"],
            "due_date": None,
            "time_estimate": 0,
            "pull_request": (
                {"merged": pull.merged, "merged_at": pull.merged_at, "draft": False, "html_url": ""} if pull else None
            ),
            "repository": {"id": 1, "name": self.name, "owner": self.owner, "full_name": self.repo},
            "pin_order": 0,
        }

    def comment_json(self, comment: dict) -> dict:
        return {
            "id": comment["id"],
            "html_url": f"{self.url}/{self.repo}/issues/{comment['issue']}#issuecomment-{comment['id']}",
            "pull_request_url": "",
            "issue_url": f"{self.url}/{self.repo}/issues/{comment['issue']}",
            "user": self.user_json(comment["user"]),
            "original_author": "",
            "original_author_id": 0,
            "body": comment["body"],
            "assets": [],
            "created_at": comment["created_at"],
            "updated_at": comment["updated_at"],
        }

    def branch_json(self, name: str) -> dict:
        sha = self.branches[name]
        return {
            "name": name,
            "commit": {
                "id": sha,
                "message": f"commit {sha[:7]}\n",
                "url": f"{self.url}/{self.repo}/commit/{sha}",
                "author": None,
                "committer": {"name": "Gitea", "email": "gitea@noreply.example.org", "username": ""},
                "verification": {
                    "verified": False,
                    "reason": "gpg.error.not_signed_commit",
                    "signature": "",
                    "signer": None,
                    "payload": "",
                },
                "timestamp": "2026-01-01T00:00:00Z",
                "added": None,
                "removed": None,
                "modified": None,
            },
            "protected": name == "main",
            "required_approvals": 0,
            "enable_status_check": False,
            "status_check_contexts": [],
            "user_can_push": True,
            "user_can_merge": True,
            "effective_branch_protection_name": "main" if name == "main" else "",
        }

    def pull_json(self, number: int) -> dict:
        pr = self.pulls[number]
        repo = self.repo_json()
        base_sha = self.branches["main"]
        return {
            "id": 7000 + number,
            "url": f"{self.url}/{self.repo}/pulls/{number}",
            "number": number,
            "user": self.user_json(pr.author),
            "title": pr.title,
            "body": pr.body,
            "labels": [],
            "milestone": None,
            "assignee": None,
            "assignees": None,
            "requested_reviewers": [self.user_json(login) for login in pr.requested] or None,
            "requested_reviewers_teams": None,
            "state": pr.state,
            "draft": False,
            "is_locked": False,
            "comments": sum(1 for c in self.comments.values() if c["issue"] == number),
            "review_comments": 0,
            "additions": 1,
            "deletions": 0,
            "changed_files": len(pr.files),
            "html_url": f"{self.url}/{self.repo}/pulls/{number}",
            "diff_url": f"{self.url}/{self.repo}/pulls/{number}.diff",
            "patch_url": f"{self.url}/{self.repo}/pulls/{number}.patch",
            "mergeable": True,
            "merged": pr.merged,
            "merged_at": pr.merged_at,
            "merge_commit_sha": pr.head_sha if pr.merged else None,
            "merged_by": self.user_json(pr.author) if pr.merged else None,
            "allow_maintainer_edit": False,
            "base": {"label": pr.base_ref, "ref": pr.base_ref, "sha": base_sha, "repo_id": 1, "repo": repo},
            "head": {"label": pr.head_ref, "ref": pr.head_ref, "sha": pr.head_sha, "repo_id": 1, "repo": repo},
            "merge_base": base_sha,
            "due_date": None,
            "created_at": pr.created_at,
            "updated_at": _now(),
            "closed_at": pr.closed_at,
            "pin_order": 0,
        }

    def review_json(self, review: dict) -> dict:
        pr = self.pulls[review["pr"]]
        return {
            "id": review["id"],
            "user": self.user_json(review["user"]),
            "team": None,
            "state": review["state"],
            "body": review["body"],
            "commit_id": review["commit_id"],
            "stale": review["commit_id"] != pr.head_sha,
            "official": True,
            "dismissed": False,
            "comments_count": 0,
            "submitted_at": review["submitted_at"],
            "updated_at": review["submitted_at"],
            "html_url": f"{self.url}/{self.repo}/pulls/{pr.number}#review-{review['id']}",
            "pull_request_url": f"{self.url}/{self.repo}/pulls/{pr.number}",
        }

    def status_json(self, status: dict, sha: str) -> dict:
        return {
            "id": status["id"],
            "status": status["status"],
            "target_url": "",
            "description": status["description"],
            "url": f"{self.url}/api/v1/repos/{self.repo}/statuses/{sha}",
            "context": status["context"],
            "creator": self.user_json(self.owner),
            "created_at": status["created_at"],
            "updated_at": status["created_at"],
        }

    # ------------------------------------------------------------------ request handling

    def handle(
        self, method: str, path: str, query: dict[str, list[str]], body: Any, user: str
    ) -> tuple[int, Any, dict]:
        prefix = f"/api/v1/repos/{self.owner}/{self.name}"
        if not path.startswith(prefix):
            raise HttpError(404, "repository not found")
        rest = path[len(prefix) :]
        for verb, pattern, handler in ROUTES:
            if verb != method:
                continue
            match = re.fullmatch(pattern, rest)
            if match:
                args = {k: unquote(v) for k, v in match.groupdict().items()}
                return handler(self, query, body, user, **args)
        raise HttpError(404, "not found")


def _q(query: dict[str, list[str]], name: str, default: str = "") -> str:
    values = query.get(name)
    return values[0] if values else default


def _page(query: dict[str, list[str]], items: list) -> tuple[list, dict]:
    page = max(1, int(_q(query, "page", "1") or 1))
    limit = int(_q(query, "limit", "0") or 0)
    limit = DEFAULT_PAGE if limit <= 0 else min(limit, MAX_PAGE)
    chunk = items[(page - 1) * limit : page * limit]
    return chunk, {"X-Total-Count": str(len(items))}


def _json_body(body: Any) -> dict:
    if not isinstance(body, dict):
        raise HttpError(422, "a JSON object body is required")
    return body


# Handlers run with the request already parsed; each holds the lock for what it reads and writes.


def list_issues(s: GiteaStandIn, query, body, user):
    with s.lock:
        state = _q(query, "state", "open")
        kind = _q(query, "type")
        names = [n for n in _q(query, "labels").split(",") if n]
        known = [n for n in names if n in s.labels]  # unknown names are dropped
        found = []
        for number in sorted(s.issues, reverse=True):
            issue = s.issues[number]
            if state != "all" and issue["state"] != state:
                continue
            if kind == "issues" and issue["is_pull"] or kind == "pulls" and not issue["is_pull"]:
                continue
            if known and not all(n in issue["labels"] for n in known):
                continue
            found.append(number)
        chunk, headers = _page(query, found)
        return 200, [s.issue_json(n) for n in chunk], headers


def get_issue(s: GiteaStandIn, query, body, user, index):
    with s.lock:
        if int(index) not in s.issues:
            raise HttpError(404)
        return 200, s.issue_json(int(index)), {}


def edit_issue(s: GiteaStandIn, query, body, user, index):
    body = _json_body(body)
    with s.lock:
        issue = s.issues.get(int(index))
        if issue is None:
            raise HttpError(404)
        if "assignees" in body:
            # The whole list is replaced: last write wins.
            issue["assignees"] = [login for login in body["assignees"] if login in s.users]
        if "state" in body:
            issue["state"] = body["state"]
            issue["closed_at"] = _now() if body["state"] == "closed" else None
        if "title" in body:
            issue["title"] = body["title"]
        issue["updated_at"] = _now()
        return 201, s.issue_json(int(index)), {}


def list_labels(s: GiteaStandIn, query, body, user):
    with s.lock:
        chunk, headers = _page(query, sorted(s.labels))
        return 200, [s.label_json(n) for n in chunk], headers


def list_assignees(s: GiteaStandIn, query, body, user):
    with s.lock:
        return 200, [s.user_json(login) for login in s.users], {}


def list_comments(s: GiteaStandIn, query, body, user, index):
    with s.lock:
        if int(index) not in s.issues:
            raise HttpError(404)
        return 200, [s.comment_json(c) for c in s.issue_comments(int(index))], {}


def create_comment(s: GiteaStandIn, query, body, user, index):
    body = _json_body(body)
    with s.lock:
        if int(index) not in s.issues:
            raise HttpError(404)
        comment = {
            "id": next(s.comment_ids),
            "issue": int(index),
            "user": user,
            "body": body.get("body", ""),
            "created_at": _now(),
            "updated_at": _now(),
        }
        s.comments[comment["id"]] = comment
        return 201, s.comment_json(comment), {}


def edit_comment(s: GiteaStandIn, query, body, user, id):
    body = _json_body(body)
    with s.lock:
        comment = s.comments.get(int(id))
        if comment is None:
            raise HttpError(404)
        if comment["user"] != user:
            raise HttpError(403)
        comment["body"] = body.get("body", "")
        comment["updated_at"] = _now()
        return 200, s.comment_json(comment), {}


def delete_comment(s: GiteaStandIn, query, body, user, id):
    with s.lock:
        comment = s.comments.get(int(id))
        if comment is None:
            raise HttpError(404)
        if comment["user"] != user:
            raise HttpError(403)
        del s.comments[int(id)]
        return 204, None, {}


def list_branches(s: GiteaStandIn, query, body, user):
    with s.lock:
        chunk, headers = _page(query, sorted(s.branches))
        return 200, [s.branch_json(n) for n in chunk], headers


def get_branch(s: GiteaStandIn, query, body, user, branch):
    with s.lock:
        if branch not in s.branches:
            raise HttpError(404)
        return 200, s.branch_json(branch), {}


def create_branch(s: GiteaStandIn, query, body, user):
    body = _json_body(body)
    name = body.get("new_branch_name", "")
    start = body.get("old_ref_name") or body.get("old_branch_name") or "main"
    start = start.removeprefix("refs/heads/")
    with s.lock:
        if start not in s.branches:
            raise HttpError(404, "The old branch does not exist")
        sha = s.branches[start]
        if name in s.branches:
            s.stats["branch_409"] += 1
            raise HttpError(409, "The branch already exists.")
        barrier = s.rendezvous.get(name)
        window = s.branch_window
    # Gitea checks, then writes the ref: a second creator can pass the check in between.
    if barrier is not None:
        barrier.wait(timeout=10)
    elif window:
        time.sleep(window)
    with s.lock:
        if name in s.branches:
            if s.branches[name] != sha:
                s.stats["branch_409"] += 1
                raise HttpError(409, "The branch already exists.")
            s.stats["branch_double_201"] += 1
        s.branches[name] = sha
        s.stats["branch_201"] += 1
        answer = s.branch_json(name)
    if s.on_branch_created is not None:
        s.on_branch_created(name)
    return 201, answer, {}


def delete_branch(s: GiteaStandIn, query, body, user, branch):
    with s.lock:
        if branch not in s.branches:
            raise HttpError(404)
        if branch == "main":
            raise HttpError(403, "protected")
        del s.branches[branch]
        return 204, None, {}


def list_pulls(s: GiteaStandIn, query, body, user):
    with s.lock:
        state = _q(query, "state", "open")
        pulls = [p for p in s.pulls.values() if state == "all" or p.state == state]
        if _q(query, "sort") == "recentclose":
            pulls.sort(key=lambda p: (p.closed_at or "", p.number), reverse=True)
        else:
            pulls.sort(key=lambda p: p.number, reverse=True)
        chunk, headers = _page(query, [p.number for p in pulls])
        return 200, [s.pull_json(n) for n in chunk], headers


def get_pull(s: GiteaStandIn, query, body, user, index):
    with s.lock:
        if int(index) not in s.pulls:
            raise HttpError(404)
        return 200, s.pull_json(int(index)), {}


def create_pull(s: GiteaStandIn, query, body, user):
    body = _json_body(body)
    with s.lock:
        head, base = body.get("head", ""), body.get("base", "main")
        if head not in s.branches or base not in s.branches:
            raise HttpError(404)
        if any(p.head_ref == head and p.state == "open" for p in s.pulls.values()):
            raise HttpError(409, "pull request already exists for these targets")
        number = next(s.numbers)
        s.issues[number] = {
            "number": number,
            "id": 5000 + number,
            "title": body.get("title", ""),
            "body": body.get("body", ""),
            "author": user,
            "labels": [],
            "assignees": [],
            "state": "open",
            "created_at": _now(),
            "updated_at": _now(),
            "closed_at": None,
            "is_pull": True,
        }
        s.pulls[number] = PullRecord(
            number=number, author=user, title=body.get("title", ""), head_ref=head, head_sha=s.branches[head]
        )
        return 201, s.pull_json(number), {}


def pull_files(s: GiteaStandIn, query, body, user, index):
    with s.lock:
        pr = s.pulls.get(int(index))
        if pr is None:
            raise HttpError(404)
        chunk, headers = _page(query, pr.files)
        out = []
        for f in chunk:
            entry = {
                "filename": f["filename"],
                "status": f["status"],
                "additions": 1,
                "deletions": 0,
                "changes": 1,
                "html_url": f"{s.url}/{s.repo}/src/commit/{pr.head_sha}/{f['filename']}",
                "contents_url": f"{s.url}/api/v1/repos/{s.repo}/contents/{f['filename']}?ref={pr.head_sha}",
                "raw_url": f"{s.url}/{s.repo}/raw/commit/{pr.head_sha}/{f['filename']}",
            }
            if f.get("previous_filename"):
                entry["previous_filename"] = f["previous_filename"]
            out.append(entry)
        return 200, out, headers


def request_reviewers(s: GiteaStandIn, query, body, user, index):
    body = _json_body(body)
    with s.lock:
        pr = s.pulls.get(int(index))
        if pr is None:
            raise HttpError(404)
        out = []
        for login in body.get("reviewers") or []:
            if login not in s.users:
                raise HttpError(422, f"user {login} does not exist")
            if login == pr.author:
                raise HttpError(422, "the poster cannot be asked to review")
            if login not in pr.requested:
                pr.requested.append(login)
            review = {
                "id": next(s.review_ids),
                "pr": pr.number,
                "user": login,
                "state": "REQUEST_REVIEW",
                "body": "",
                "commit_id": pr.head_sha,
                "submitted_at": _now(),
            }
            out.append(s.review_json(review))
        return 201, out, {}


def list_reviews(s: GiteaStandIn, query, body, user, index):
    with s.lock:
        if int(index) not in s.pulls:
            raise HttpError(404)
        reviews = sorted((r for r in s.reviews.values() if r["pr"] == int(index)), key=lambda r: r["id"])
        chunk, headers = _page(query, reviews)
        return 200, [s.review_json(r) for r in chunk], headers


def create_review(s: GiteaStandIn, query, body, user, index):
    body = _json_body(body)
    with s.lock:
        pr = s.pulls.get(int(index))
        if pr is None:
            raise HttpError(404)
        event = body.get("event", "")
        text = body.get("body", "")
        if event not in ("APPROVED", "REQUEST_CHANGES", "COMMENT"):
            raise HttpError(422, f"unknown review event {event!r}")
        if event in ("APPROVED", "REQUEST_CHANGES") and user == pr.author:
            raise HttpError(422, "approve/reject your own pull is not allowed")
        if event in ("REQUEST_CHANGES", "COMMENT") and not text.strip():
            raise HttpError(422, "review event needs a body")
        review = {
            "id": next(s.review_ids),
            "pr": pr.number,
            "user": user,
            "state": event,
            "body": text,
            "commit_id": body.get("commit_id") or pr.head_sha,
            "submitted_at": _now(),
        }
        s.reviews[review["id"]] = review
        if user in pr.requested:
            pr.requested.remove(user)
        return 200, s.review_json(review), {}


def _combined_state(statuses: list[dict]) -> str:
    states = {st["status"] for st in statuses}
    if not states:
        return ""
    for worst in ("error", "failure", "pending"):
        if worst in states:
            return worst
    return "success"  # warning (and skipped) count as success


def combined_status(s: GiteaStandIn, query, body, user, ref):
    with s.lock:
        sha = s.branches.get(ref, ref)
        statuses = sorted(s.statuses.get(sha, {}).values(), key=lambda st: st["id"])
        chunk, headers = _page(query, statuses)
        return (
            200,
            {
                "state": _combined_state(statuses),
                "sha": sha,
                "total_count": len(statuses),
                "statuses": [s.status_json(st, sha) for st in chunk],
                "repository": s.repo_json(),
                "commit_url": f"{s.url}/api/v1/repos/{s.repo}/commits/{sha}",
                "url": f"{s.url}/api/v1/repos/{s.repo}/commits/{sha}/status",
            },
            headers,
        )


def is_merged(s: GiteaStandIn, query, body, user, index):
    with s.lock:
        pr = s.pulls.get(int(index))
        if pr is None or not pr.merged:
            return 404, None, {}
        return 204, None, {}


def merge_pull(s: GiteaStandIn, query, body, user, index):
    body = _json_body(body)
    with s.lock:
        pr = s.pulls.get(int(index))
        if pr is None:
            raise HttpError(404)
        if pr.merged or pr.state != "open":
            return 405, None, {}
        if body.get("head_commit_id") and body["head_commit_id"] != pr.head_sha:
            raise HttpError(409, "head out of date")
        checks = _combined_state(list(s.statuses.get(pr.head_sha, {}).values()))
        if body.get("merge_when_checks_succeed") and checks != "success":
            pr.auto_merge = True
            return 201, None, {}
        s.close_pull(pr.number, merged=True)
        return 200, None, {}


def raw_file(s: GiteaStandIn, query, body, user, filepath):
    with s.lock:
        ref = _q(query, "ref", "main")
        sha = s.branches.get(ref, ref)
        content = s.files.get(sha, {}).get(filepath)
        if content is None:
            raise HttpError(404)
        return 200, content, {"Content-Type": "text/plain; charset=utf-8"}


def list_hooks(s: GiteaStandIn, query, body, user):
    with s.lock:
        chunk, headers = _page(query, sorted(s.hooks))
        return 200, [s.hooks[i] for i in chunk], headers


def create_hook(s: GiteaStandIn, query, body, user):
    body = _json_body(body)
    with s.lock:
        hook_id = len(s.hooks) + 1
        config = {k: v for k, v in (body.get("config") or {}).items() if k != "secret"}
        s.hooks[hook_id] = {
            "id": hook_id,
            "type": body.get("type", "gitea"),
            "branch_filter": body.get("branch_filter", "*"),
            "config": config,
            "events": body.get("events") or ["push"],
            "authorization_header": "",
            "active": bool(body.get("active")),
            "created_at": _now(),
            "updated_at": _now(),
        }
        return 201, s.hooks[hook_id], {}


_N = r"(?P<index>\d+)"
ROUTES = [
    ("GET", r"/issues", list_issues),
    ("GET", rf"/issues/{_N}", get_issue),
    ("PATCH", rf"/issues/{_N}", edit_issue),
    ("GET", r"/labels", list_labels),
    ("GET", r"/assignees", list_assignees),
    ("GET", rf"/issues/{_N}/comments", list_comments),
    ("POST", rf"/issues/{_N}/comments", create_comment),
    ("PATCH", r"/issues/comments/(?P<id>\d+)", edit_comment),
    ("DELETE", r"/issues/comments/(?P<id>\d+)", delete_comment),
    ("GET", r"/branches", list_branches),
    ("POST", r"/branches", create_branch),
    ("GET", r"/branches/(?P<branch>[^/]+)", get_branch),
    ("DELETE", r"/branches/(?P<branch>[^/]+)", delete_branch),
    ("GET", r"/pulls", list_pulls),
    ("POST", r"/pulls", create_pull),
    ("GET", rf"/pulls/{_N}", get_pull),
    ("GET", rf"/pulls/{_N}/files", pull_files),
    ("POST", rf"/pulls/{_N}/requested_reviewers", request_reviewers),
    ("GET", rf"/pulls/{_N}/reviews", list_reviews),
    ("POST", rf"/pulls/{_N}/reviews", create_review),
    ("GET", r"/commits/(?P<ref>[^/]+)/status", combined_status),
    ("GET", rf"/pulls/{_N}/merge", is_merged),
    ("POST", rf"/pulls/{_N}/merge", merge_pull),
    ("GET", r"/raw/(?P<filepath>.+)", raw_file),
    ("GET", r"/hooks", list_hooks),
    ("POST", r"/hooks", create_hook),
]


class _Handler(BaseHTTPRequestHandler):
    standin: GiteaStandIn
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; without TCP_NODELAY each answer waits on a delayed ACK.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    def _serve(self, method: str) -> None:
        s = self.standin
        parts = urlsplit(self.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        headers = {k: v for k, v in self.headers.items()}
        if s.contract is not None:
            problems = s.contract.check_request(method, parts.path, query, raw, headers)
            with s.lock:
                s.violations.extend(problems)
        self.injected = False
        status, payload, extra = self._dispatch(method, parts.path, query, raw, headers)
        content_type = extra.pop("Content-Type", "application/json;charset=utf-8")
        if isinstance(payload, bytes):
            data = payload
        elif payload is None:
            data = b""
        else:
            data = json.dumps(payload).encode()
        # An injected failure stands for Gitea breaking (a 5xx outside its spec): not checked.
        if s.contract is not None and not self.injected:
            problems = s.contract.check_response(method, parts.path, status, data, content_type)
            with s.lock:
                s.violations.extend(problems)
        with s.lock:
            s.requests.append((method, parts.path, status, raw.decode(errors="replace")))
        self.send_response(status)
        if data or status not in (204,):
            self.send_header("Content-Type", content_type)
        for name, value in extra.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if data:
            self.wfile.write(data)

    def _dispatch(self, method: str, path: str, query, raw: bytes, headers) -> tuple[int, Any, dict]:
        s = self.standin
        auth = headers.get("Authorization", "")
        user = s.tokens.get(auth.removeprefix("token ").strip()) if auth.startswith("token ") else None
        if user is None:
            return 401, {"message": "token is required", "url": ""}, {}
        fault = self._fault(method, path)
        if fault is not None and not fault.after:
            return fault.status, {"message": "injected failure", "url": ""}, {}
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            return 422, {"message": "bad JSON", "url": ""}, {}
        try:
            result = s.handle(method, path, query, body, user)
        except HttpError as exc:
            result = (exc.status, {"message": exc.message, "url": ""} if exc.status not in (404, 204) else None, {})
        if fault is not None:
            return fault.status, {"message": "injected failure after the work was done", "url": ""}, {}
        return result

    def _fault(self, method: str, path: str) -> Fault | None:
        s = self.standin
        with s.lock:
            for fault in s.faults:
                if fault.method == method and fault.pattern.search(path) and fault.times > 0:
                    fault.times -= 1
                    self.injected = True
                    return fault
        return None

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def do_PUT(self) -> None:
        self._serve("PUT")
