//! Tests of the group list's pages, the member counts behind them, and the per-user group
//! limits the writer enforces.

use rusqlite::Connection;

use super::*;

fn commit(s: &mut Store, writes: Vec<Write>) -> Vec<Written> {
    s.apply(Batch { writes }).unwrap().0
}

fn user(s: &mut Store, name: &str) -> UserId {
    let write = Write::CreateUser {
        name: name.into(),
        password: None,
        created_ms: 1,
    };
    match commit(s, vec![write])[..] {
        [Written::Done(id)] => id,
        ref other => panic!("{other:?}"),
    }
}

fn create(id: GroupId, name: &str, private: bool, owner: UserId, limits: GroupLimits) -> Write {
    Write::CreateGroup {
        id,
        name: name.into(),
        private,
        owner,
        created_ms: 1,
        limits,
    }
}

fn join(group: GroupId, user: UserId, limits: GroupLimits) -> Write {
    Write::Join {
        group,
        user,
        limits,
    }
}

fn names(page: &[GroupSummary]) -> Vec<&str> {
    page.iter().map(|g| g.group.name.as_str()).collect()
}

#[test]
fn pages_hold_public_and_own_groups_in_name_order() {
    let mut s = Store::open_in_memory().unwrap();
    let (a, b) = (user(&mut s, "a"), user(&mut s, "b"));
    let none = GroupLimits::NONE;
    commit(
        &mut s,
        vec![
            create(1, "p3", false, a, none),
            create(2, "p1", false, a, none),
            create(3, "q2", true, a, none),
            create(4, "q1", true, b, none),
            create(5, "p2", false, b, none),
        ],
    );
    let (page, more) = s.list_groups(a, "", 2).unwrap();
    assert_eq!((names(&page), more), (vec!["p1", "p2"], true));
    let (page, more) = s.list_groups(a, "p2", 2).unwrap();
    assert_eq!((names(&page), more), (vec!["p3", "q2"], false));
    assert_eq!(page[1].role, Some(Role::Owner));
    // b sees its own private group, not a's
    let (page, more) = s.list_groups(b, "", 10).unwrap();
    assert_eq!((names(&page), more), (vec!["p1", "p2", "p3", "q1"], false));
    assert_eq!(page[0].role, None);
    // exactly a full page: no more
    let (page, more) = s.list_groups(b, "p3", 1).unwrap();
    assert_eq!((names(&page), more), (vec!["q1"], false));
}

#[test]
fn member_counts_follow_joins_departures_and_deletions() {
    let mut s = Store::open_in_memory().unwrap();
    let (a, b, c) = (user(&mut s, "a"), user(&mut s, "b"), user(&mut s, "c"));
    let none = GroupLimits::NONE;
    commit(
        &mut s,
        vec![
            create(1, "g", false, a, none),
            join(1, b, none),
            join(1, c, none),
            join(1, c, none),
            Write::RemoveMember {
                group: 1,
                user: b,
                role: Role::Member,
                ban: false,
            },
        ],
    );
    let (page, _) = s.list_groups(a, "", 10).unwrap();
    assert_eq!(
        page[0].members, 2,
        "a and c; the second join of c conflicted"
    );
    commit(&mut s, vec![Write::DeleteGroup { group: 1 }]);
    assert!(s.list_groups(a, "", 10).unwrap().0.is_empty());
}

#[test]
fn the_writer_refuses_to_cross_a_users_group_limits() {
    let mut s = Store::open_in_memory().unwrap();
    let (a, b) = (user(&mut s, "a"), user(&mut s, "b"));
    let limits = GroupLimits {
        member_of: 2,
        owner_of: 1,
    };
    let written = commit(
        &mut s,
        vec![
            create(1, "g1", false, a, limits),
            create(2, "g2", false, a, limits),
            create(3, "g3", false, b, limits),
            join(3, a, limits),
            create(4, "g4", false, b, GroupLimits::NONE),
            join(4, a, limits),
        ],
    );
    assert_eq!(
        written,
        vec![
            Written::Done(0),
            Written::TooManyGroups { owned: true },
            Written::Done(0),
            Written::Done(0),
            Written::Done(0),
            Written::TooManyGroups { owned: false },
        ]
    );
    assert!(
        s.group("g2").unwrap().is_none(),
        "nothing of g2 was written"
    );
    assert_eq!(s.role(4, a).unwrap(), None);
    // b hands g3 over to a, who owns g1 already
    let written = commit(
        &mut s,
        vec![Write::TransferOwnership {
            group: 3,
            from: b,
            to: a,
            limits,
        }],
    );
    assert_eq!(written, vec![Written::TooManyGroups { owned: true }]);
    assert_eq!(s.role(3, b).unwrap(), Some(Role::Owner));
    assert_eq!(s.role(3, a).unwrap(), Some(Role::Member));
}

#[test]
fn schema_5_counts_the_members_of_existing_groups() {
    let mut db = Connection::open_in_memory().unwrap();
    for step in &schema::MIGRATIONS[..4] {
        db.execute_batch(step).unwrap();
    }
    db.execute_batch(
        "INSERT INTO users (id, name, created_ms) VALUES (1, 'a', 0), (2, 'b', 0);
         INSERT INTO groups (id, name, private, created_ms) VALUES (1, 'g', 0, 0), (2, 'h', 1, 0);
         INSERT INTO members (group_id, user_id, role) VALUES (1, 1, 'owner'), (1, 2, 'member'),
            (2, 2, 'owner');
         PRAGMA user_version = 4;",
    )
    .unwrap();
    schema::migrate(&mut db).unwrap();
    let s = Store {
        db,
        pairs: Default::default(),
    };
    let (page, _) = s.list_groups(2, "", 10).unwrap();
    let counts: Vec<(&str, u64)> = page
        .iter()
        .map(|g| (g.group.name.as_str(), g.members))
        .collect();
    assert_eq!(counts, vec![("g", 2), ("h", 1)]);
}
