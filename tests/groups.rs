//! What groups and user names give away, and what one user may cost the server in groups:
//! private groups look the same as missing ones to outsiders, naming users who do not exist
//! has a budget, a user's groups are limited, and `group.list` answers a page at a time.

mod support;

use serde_json::{json, Value};
use support::chat::{self, session, user, Client, DataDir};
use support::metric_value;

use std::time::Duration;

/// Sends `bodies` in one write, with ids, and returns their replies in order.
fn pipeline(c: &mut Client, bodies: &[Value]) -> Vec<Value> {
    let texts: Vec<String> = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let mut b = b.clone();
            b["id"] = json!(format!("p{i}"));
            b.to_string()
        })
        .collect();
    c.send_texts_together(&texts);
    (0..bodies.len())
        .map(|i| c.reply_to(&json!(format!("p{i}"))))
        .collect()
}

/// Creates public groups `{prefix}{n:03}` for each `n`, 50 requests at a time; all must succeed.
fn create_groups(c: &mut Client, prefix: &str, ns: std::ops::Range<usize>) {
    let bodies: Vec<Value> = ns
        .map(|n| json!({"type": "group.create", "group": format!("{prefix}{n:03}")}))
        .collect();
    for chunk in bodies.chunks(50) {
        for reply in pipeline(c, chunk) {
            assert_eq!(reply["type"], "ok", "{reply}");
        }
    }
}

/// A reply as the client sees it, without its `re` and with `name` written as `NAME`, so that
/// replies about two different names can be compared.
fn seen(mut reply: Value, name: &str) -> Value {
    reply.as_object_mut().unwrap().remove("re");
    if let Some(m) = reply["message"].as_str() {
        reply["message"] = json!(m.replace(name, "NAME"));
    }
    reply
}

#[test]
fn outsiders_get_the_same_answers_for_a_private_group_as_for_a_missing_one() {
    let dir = DataDir::new("hidden");
    let server = chat::start(&dir, &[]);
    let (mut owner, _) = user(&server, "olga");
    let (mut member, _) = user(&server, "mia");
    let (mut outsider, _) = user(&server, "otto");
    let (_nora, _) = user(&server, "nora");
    owner.ok(json!({"type": "group.create", "group": "club", "private": true}));
    owner.ok(json!({"type": "group.invite", "group": "club", "user": "mia"}));
    member.ok(json!({"type": "group.join", "group": "club"}));

    // Kicking, or changing the role of, a member or a user who is not one: one answer.
    for kind in ["group.kick", "group.role"] {
        let ask =
            |user: &str| json!({"type": kind, "group": "club", "user": user, "role": "admin"});
        let of_member = seen(outsider.request(ask("mia")), "mia");
        let of_other = seen(outsider.request(ask("nora")), "nora");
        assert_eq!(of_member, of_other, "{kind} tells members from others");
        assert_eq!(of_member["type"], "error");
    }
    // Every command naming the group: the private group and a missing one answer alike.
    let commands = [
        json!({"type": "group.join", "group": "NAME"}),
        json!({"type": "group.leave", "group": "NAME"}),
        json!({"type": "group.members", "group": "NAME"}),
        json!({"type": "group.delete", "group": "NAME"}),
        json!({"type": "group.invite", "group": "NAME", "user": "nora"}),
        json!({"type": "group.kick", "group": "NAME", "user": "mia"}),
        json!({"type": "group.role", "group": "NAME", "user": "mia", "role": "admin"}),
        json!({"type": "send", "to": "#NAME", "text": "hello?"}),
        json!({"type": "history", "with": "#NAME"}),
        json!({"type": "typing", "to": "#NAME"}),
    ];
    for command in commands {
        let about = |name: &str| -> Value {
            serde_json::from_str(&command.to_string().replace("NAME", name)).unwrap()
        };
        let private = seen(outsider.request(about("club")), "club");
        let missing = seen(outsider.request(about("nothere")), "nothere");
        assert_eq!(private, missing, "{command}");
        assert_eq!(private["code"], "not_found", "{command}");
    }
    // Insiders still hear the rules: a member may not kick; the owner learns who is not in.
    member.err(
        json!({"type": "group.kick", "group": "club", "user": "olga"}),
        "forbidden",
    );
    owner.err(
        json!({"type": "group.kick", "group": "club", "user": "nora"}),
        "not_found",
    );
    // An invitation makes the group visible to the one invited.
    owner.ok(json!({"type": "group.invite", "group": "club", "user": "otto"}));
    outsider.ok(json!({"type": "group.join", "group": "club"}));
}

#[test]
fn naming_users_who_do_not_exist_runs_out_of_budget_and_known_names_cost_nothing() {
    let dir = DataDir::new("probes");
    // The default budget: a burst of 20 unknown names.
    let server = chat::start(&dir, &[]);
    let (mut prober, token) = user(&server, "pat");
    let (mut bob, _) = user(&server, "bob");
    // Known names are not charged, however many.
    for _ in 0..30 {
        prober.ok(json!({"type": "history", "with": "@bob"}));
    }
    let mut answers = Vec::new();
    for i in 0..25 {
        let r = prober.request(json!({"type": "history", "with": format!("@ghost{i}")}));
        answers.push(r["code"].as_str().unwrap_or("ok").to_string());
    }
    let not_found = answers.iter().filter(|c| *c == "not_found").count();
    assert_eq!(not_found, 20, "{answers:?}");
    assert!(
        answers[20..].iter().all(|c| c == "rate_limited"),
        "{answers:?}"
    );
    // Spent: every lookup of a user by name is refused alike, a known name too, on every
    // connection of the user, and by every command that names a user.
    prober.err(json!({"type": "history", "with": "@bob"}), "rate_limited");
    let mut other = session(&server, &token);
    other.err(
        json!({"type": "send", "to": "@ghost99", "text": "hi"}),
        "rate_limited",
    );
    other.err(
        json!({"type": "send", "to": "@bob", "text": "hi"}),
        "rate_limited",
    );
    prober.ok(json!({"type": "group.create", "group": "pats"}));
    prober.err(
        json!({"type": "group.invite", "group": "pats", "user": "bob"}),
        "rate_limited",
    );
    // Others keep their own budget.
    bob.ok(json!({"type": "history", "with": "@pat"}));
    bob.err(json!({"type": "history", "with": "@ghost1"}), "not_found");
    let refused = metric_value(&server.metrics(), "chatd_unknown_user_refusals_total");
    assert!(refused.is_some_and(|n| n >= 9.0), "{refused:?}");
}

#[test]
fn a_user_owns_at_most_100_groups_by_default() {
    let dir = DataDir::new("owned");
    let server = chat::start(&dir, &[]);
    let (mut alice, token) = user(&server, "alice");
    let mut second = session(&server, &token);
    create_groups(&mut alice, "a", 0..50);
    create_groups(&mut second, "a", 50..100);
    let r = alice.err(
        json!({"type": "group.create", "group": "a100"}),
        "forbidden",
    );
    assert!(r["message"].as_str().unwrap().contains("100"), "{r}");
    // nothing of the refused group was stored
    alice.err(
        json!({"type": "group.members", "group": "a100"}),
        "not_found",
    );
    // Deleting one makes room again.
    alice.ok(json!({"type": "group.delete", "group": "a000"}));
    alice.ok(json!({"type": "group.create", "group": "a100"}));
}

#[test]
fn joining_and_receiving_ownership_stop_at_the_configured_limits() {
    let dir = DataDir::new("joined");
    let server = chat::start(
        &dir,
        &[
            "--max-groups-per-user",
            "3",
            "--max-owned-groups-per-user",
            "2",
        ],
    );
    let (mut alice, _) = user(&server, "alice");
    let (mut bob, _) = user(&server, "bob");
    alice.ok(json!({"type": "group.create", "group": "a1"}));
    alice.ok(json!({"type": "group.create", "group": "a2"}));
    alice.err(json!({"type": "group.create", "group": "a3"}), "forbidden");
    bob.ok(json!({"type": "group.create", "group": "b1"}));
    bob.ok(json!({"type": "group.create", "group": "b2"}));
    alice.ok(json!({"type": "group.join", "group": "b1"}));
    let r = alice.err(json!({"type": "group.join", "group": "b2"}), "forbidden");
    assert!(r["message"].as_str().unwrap().contains('3'), "{r}");
    // alice owns 2 already: b1 cannot be handed to her
    bob.err(
        json!({"type": "group.role", "group": "b1", "user": "alice", "role": "owner"}),
        "forbidden",
    );
    alice.ok(json!({"type": "group.leave", "group": "b1"}));
    alice.ok(json!({"type": "group.join", "group": "b2"}));
    let refused = metric_value(&server.metrics(), "chatd_group_limit_refusals_total");
    assert_eq!(refused, Some(3.0));
}

/// Every group of `c`'s list, page by page, with `limit`.
fn all_pages(c: &mut Client, limit: i64) -> Vec<String> {
    let mut names = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut ask = json!({"type": "group.list", "limit": limit});
        if let Some(a) = &after {
            ask["after"] = json!(a);
        }
        let page = c.ok(ask);
        let groups = page["groups"].as_array().unwrap();
        assert!(groups.len() as i64 <= limit);
        names.extend(
            groups
                .iter()
                .map(|g| g["group"].as_str().unwrap().to_string()),
        );
        if page["more"] == json!(false) {
            assert!(page.get("next").is_none(), "{page}");
            return names;
        }
        assert_eq!(page["next"], json!(names.last().unwrap()), "{page}");
        after = names.last().cloned();
    }
}

#[test]
fn group_list_answers_a_page_at_a_time() {
    let dir = DataDir::new("pages");
    let server = chat::start(&dir, &[]);
    let (mut a, _) = user(&server, "ann");
    let (mut b, _) = user(&server, "ben");
    let (mut c, _) = user(&server, "cat");
    let (mut d, _) = user(&server, "dan");
    // Well within each connection's command burst of 100.
    create_groups(&mut a, "g", 0..40);
    create_groups(&mut b, "g", 40..110);
    create_groups(&mut c, "g", 110..180);
    create_groups(&mut d, "g", 180..250);
    c.ok(json!({"type": "group.create", "group": "hidden", "private": true}));
    a.ok(json!({"type": "group.create", "group": "mine", "private": true}));

    // The v1 form still answers: the first page, and where the next starts.
    let first = a.ok(json!({"type": "group.list"}));
    let groups = first["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 100);
    assert_eq!(
        groups[0],
        json!({"group": "g000", "private": false, "members": 1, "role": "owner"})
    );
    assert_eq!(groups[99]["group"], "g099");
    assert_eq!(
        (&first["more"], &first["next"]),
        (&json!(true), &json!("g099"))
    );

    let names = all_pages(&mut a, 70);
    let mut expected: Vec<String> = (0..250).map(|n| format!("g{n:03}")).collect();
    expected.push("mine".into());
    assert_eq!(
        names, expected,
        "every group once, in order, no private group of others"
    );
    assert_eq!(
        all_pages(&mut a, 1000).len(),
        251,
        "a limit over 100 counts as 100"
    );
    a.err(json!({"type": "group.list", "limit": 0}), "bad_request");
    let last = a.ok(json!({"type": "group.list", "after": "g249"}));
    assert_eq!(
        (last["groups"].as_array().unwrap().len(), &last["more"]),
        (1, &json!(false))
    );
}

/// Past `--large-group` members, joins are announced to the joiner only; members can still ask
/// for the list.
#[test]
fn a_large_group_does_not_announce_every_join_to_every_member() {
    let dir = DataDir::new("large-group");
    let server = chat::start(&dir, &["--large-group", "2"]);
    let (mut owner, _) = user(&server, "owner");
    owner.ok(json!({"type": "group.create", "group": "big"}));
    let (mut first, _) = user(&server, "first");
    first.ok(json!({"type": "group.join", "group": "big"}));
    assert_eq!(
        owner.event("group.joined")["user"],
        "first",
        "two members: announced"
    );
    assert_eq!(first.event("group.joined")["user"], "first");
    let (mut second, _) = user(&server, "second");
    second.ok(json!({"type": "group.join", "group": "big"}));
    assert_eq!(second.event("group.joined")["user"], "second");
    owner.no_event("group.joined", Duration::from_millis(300));
    first.no_event("group.joined", Duration::from_millis(10));
    let members = owner.ok(json!({"type": "group.members", "group": "big"}));
    assert_eq!(members["members"].as_array().unwrap().len(), 3);
}
