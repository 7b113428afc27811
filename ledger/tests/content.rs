//! Lot content: the category tree, attributes, comments and images — rules, limits,
//! ownership, retries, and that it all survives a snapshot.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use common::World;
use ledger::Ledger;
use ledger::limits;
use ledger::pb::{self, command::Body, event::Kind, outcome::Result as Res};

fn put(id: &str, name: &str, parent: &str) -> Body {
    Body::PutCategory(pb::PutCategory { category_id: id.into(), name: name.into(), parent_id: parent.into() })
}

fn attrs(lot: &str, kv: &[(&str, &str)]) -> Body {
    Body::AddAttributes(pb::AddAttributes {
        lot_id: lot.into(),
        attributes: kv.iter().map(|(k, v)| pb::AttributeInput { key: (*k).into(), value: (*v).into() }).collect(),
    })
}

fn comment(lot: &str, id: &str, content: &str) -> Body {
    Body::AddComment(pb::AddComment { lot_id: lot.into(), comment_id: id.into(), content: content.into() })
}

fn image(lot: &str, id: &str, hash_byte: char) -> Body {
    Body::AddImage(pb::AddImage {
        lot_id: lot.into(),
        image_id: id.into(),
        content_hash: hash_byte.to_string().repeat(64),
        content_type: "image/png".into(),
        bytes: 1000,
        width: 640,
        height: 480,
    })
}

/// A world with lot `L` (seller `sam`) in Draft.
fn world() -> World {
    let mut w = World::new();
    w.ok("cur", Body::CreateLot(common::lot("L", 10_000, None, 0)));
    w
}

fn gallery(w: &World, lot: &str) -> Vec<String> {
    w.ledger.lot(lot).unwrap().content.images.iter().map(|i| i.image_id.clone()).collect()
}

#[test]
fn the_category_tree_refuses_cycles_unknown_parents_and_depth() {
    let mut w = world();
    w.ok("cur", put("art", "Art", ""));
    w.ok("cur", put("paint", "Paintings", "art"));
    w.ok("cur", put("oil", "Oils", "paint"));
    w.rejected("cur", put("x", "X", "nowhere"), "category_not_found");
    // Moving a category under itself or its own descendant would make a loop.
    w.rejected("cur", put("art", "Art", "oil"), "category_cycle");
    w.rejected("cur", put("paint", "Paintings", "paint"), "category_cycle");
    assert_eq!(w.ledger.category("art").unwrap().parent_id, "");
    // Users may not shape the tree.
    w.rejected("ana", put("y", "Y", ""), "forbidden");
    // A retry of the same put is a no-op without events; a rename is a change.
    assert!(w.ok("cur", put("oil", "Oils", "paint")).events.is_empty());
    assert!(matches!(w.ok("cur", put("oil", "Oil paintings", "paint")).events[0].kind, Some(Kind::CategoryPut(_))));
    // A chain as deep as allowed, then one more is refused, and so is moving a subtree under
    // a leaf when the result would be too deep.
    let mut parent = String::new();
    for depth in 1..=limits::CATEGORY_DEPTH_MAX {
        let id = format!("d{depth}");
        w.ok("cur", put(&id, "deep", &parent));
        parent = id;
    }
    w.rejected("cur", put("too-deep", "deep", &parent), "category_too_deep");
    // "art" holds three levels: under d6 its leaves would sit at depth 9.
    w.rejected("cur", put("art", "Art", "d6"), "category_too_deep");
    w.ok("cur", put("art", "Art", "d5"));
    w.ok("cur", put("art", "Art", ""));
    // Moving a leaf elsewhere is fine.
    w.ok("cur", put("oil", "Oils", "art"));
    let subtree = w.ledger.category_subtree("art");
    assert_eq!(subtree.into_iter().collect::<Vec<_>>(), ["art", "oil", "paint"]);
    assert!(w.ledger.category_subtree("nope").is_empty());
}

#[test]
fn lots_are_listed_under_known_categories_by_curators() {
    let mut w = world();
    w.ok("cur", put("art", "Art", ""));
    w.ok("cur", put("print", "Prints", "art"));
    let set = |ids: &[&str]| {
        Body::SetLotCategories(pb::SetLotCategories {
            lot_id: "L".into(),
            category_ids: ids.iter().map(|s| (*s).into()).collect(),
        })
    };
    w.rejected("cur", set(&["art", "nope"]), "category_not_found");
    w.rejected("cur", set(&["art", "art"]), "invalid_input");
    w.rejected("sam", set(&["art"]), "forbidden");
    let applied = w.ok("cur", set(&["art", "print"]));
    assert!(matches!(&applied.events[0].kind, Some(Kind::LotCategoriesSet(e)) if e.category_ids == ["art", "print"]));
    assert_eq!(w.view("L").categories, ["art", "print"]);
    let counts: Vec<(String, u32)> =
        w.ledger.category_views().into_iter().map(|c| (c.category_id, c.lot_count)).collect();
    assert_eq!(counts, [("art".to_string(), 1), ("print".to_string(), 1)]);
    let art = w.ledger.category_views().into_iter().find(|c| c.category_id == "art").unwrap();
    assert_eq!(art.children, ["print"]);
    let too_many: Vec<String> = (0..=limits::LOT_CATEGORIES_MAX).map(|i| format!("c{i}")).collect();
    for id in &too_many {
        w.ok("cur", put(id, "c", ""));
    }
    let refs: Vec<&str> = too_many.iter().map(String::as_str).collect();
    w.rejected("cur", set(&refs), "content_limit_reached");
}

#[test]
fn attributes_are_bulk_all_or_none_and_owned_by_seller_and_curators() {
    let mut w = world();
    let applied = w.ok("sam", attrs("L", &[("medium", "oil on canvas"), ("year", "1962")]));
    let Res::Attributes(added) = applied.outcome.result.unwrap() else { panic!("not attributes") };
    let ids: Vec<&str> = added.attributes.iter().map(|a| a.attribute_id.as_str()).collect();
    assert_eq!(ids, ["a0", "a1"]);
    // One bad attribute refuses the whole batch.
    w.rejected("cur", attrs("L", &[("height", "90 cm"), ("year", "1963")]), "attribute_exists");
    w.rejected("cur", attrs("L", &[("height", "90 cm"), ("Bad Key", "x")]), "invalid_input");
    w.rejected("cur", attrs("L", &[("height", "")]), "invalid_input");
    w.rejected("cur", attrs("L", &[]), "invalid_input");
    assert_eq!(w.ledger.lot("L").unwrap().content.attributes.len(), 2);
    // Other users may not; unknown lots are unknown.
    w.rejected("ana", attrs("L", &[("height", "90 cm")]), "forbidden");
    w.rejected("cur", attrs("nope", &[("height", "90 cm")]), "lot_not_found");
    // Delete, then the key is free again and the new attribute gets a fresh id.
    let delete = |id: &str| Body::DeleteAttribute(pb::DeleteAttribute { lot_id: "L".into(), attribute_id: id.into() });
    w.rejected("ana", delete("a1"), "forbidden");
    w.ok("cur", delete("a1"));
    w.rejected("cur", delete("a1"), "attribute_not_found");
    let applied = w.ok("cur", attrs("L", &[("year", "1963")]));
    assert!(matches!(&applied.events[0].kind, Some(Kind::AttributesAdded(v)) if v.attributes[0].attribute_id == "a2"));
    // The bound on attributes per lot.
    let many: Vec<(String, String)> =
        (0..limits::LOT_ATTRIBUTES_MAX).map(|i| (format!("k{i}"), "v".to_string())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    w.rejected("cur", attrs("L", &many), "content_limit_reached");
}

#[test]
fn comments_are_bounded_retried_and_deleted_by_authors_or_curators() {
    let mut w = world();
    let applied = w.ok("ana", comment("L", "c1", "Lovely brushwork"));
    let Res::Comment(first) = applied.outcome.result.unwrap() else { panic!("not a comment") };
    assert_eq!((first.author.as_str(), first.created_at_ms), ("ana", w.at));
    // The same comment again is the first answer; another text under the id is a conflict.
    let again = w.ok("ana", comment("L", "c1", "Lovely brushwork"));
    assert!(again.events.is_empty());
    assert_eq!(again.outcome.result, Some(Res::Comment(first)));
    w.rejected("ana", comment("L", "c1", "Changed my mind"), "comment_exists");
    w.rejected("ben", comment("L", "c1", "Lovely brushwork"), "comment_exists");
    // 2,000 characters (not bytes) is the most; empty or blank is nothing.
    w.ok("ben", comment("L", "c2", &"é".repeat(limits::COMMENT_CHARS_MAX)));
    w.rejected("ben", comment("L", "c3", &"e".repeat(limits::COMMENT_CHARS_MAX + 1)), "invalid_input");
    w.rejected("ben", comment("L", "c3", " \n "), "invalid_input");
    w.rejected("", comment("L", "c3", "the system has no voice"), "forbidden");
    w.rejected("ghost", comment("L", "c3", "who am I"), "forbidden");
    w.rejected("ben", comment("nope", "c3", "hello"), "lot_not_found");
    assert_eq!(w.view("L").comment_count, 2);
    // Only the author or a curator deletes.
    let delete = |id: &str| Body::DeleteComment(pb::DeleteComment { lot_id: "L".into(), comment_id: id.into() });
    w.rejected("ben", delete("c1"), "forbidden");
    w.rejected("sam", delete("c1"), "forbidden");
    w.ok("ana", delete("c1"));
    w.ok("cur", delete("c2"));
    w.rejected("cur", delete("c2"), "comment_not_found");
    assert_eq!(w.view("L").comment_count, 0);
}

#[test]
fn images_are_checked_unique_and_reordered_exactly() {
    let mut w = world();
    w.ok("sam", image("L", "i1", 'a'));
    w.ok("cur", image("L", "i2", 'b'));
    w.ok("cur", image("L", "i3", 'a'));
    assert!(w.ledger.image_referenced(&"a".repeat(64)));
    assert_eq!(w.view("L").image_count, 3);
    // The same add again is a no-op; the id with other bytes, or on another lot, is taken.
    assert!(w.ok("cur", image("L", "i1", 'a')).events.is_empty());
    w.rejected("cur", image("L", "i1", 'c'), "image_exists");
    w.ok("cur", Body::CreateLot(common::lot("M", 10_000, None, 0)));
    w.rejected("cur", image("M", "i1", 'a'), "image_exists");
    w.rejected("ana", image("L", "i9", 'c'), "forbidden");
    let bad = |f: &dyn Fn(&mut pb::AddImage)| {
        let mut add = pb::AddImage {
            lot_id: "L".into(),
            image_id: "i9".into(),
            content_hash: "c".repeat(64),
            content_type: "image/jpeg".into(),
            bytes: 10,
            width: 10,
            height: 10,
        };
        f(&mut add);
        Body::AddImage(add)
    };
    w.rejected("cur", bad(&|a| a.content_type = "image/gif".into()), "invalid_image");
    w.rejected("cur", bad(&|a| a.content_hash = "C".repeat(64)), "invalid_image");
    w.rejected("cur", bad(&|a| a.bytes = limits::IMAGE_BYTES_MAX + 1), "invalid_image");
    w.rejected("cur", bad(&|a| a.width = limits::IMAGE_SIDE_MAX + 1), "invalid_image");
    w.rejected("cur", bad(&|a| a.height = 0), "invalid_image");
    let reorder = |ids: &[&str]| {
        Body::ReorderImages(pb::ReorderImages {
            lot_id: "L".into(),
            image_ids: ids.iter().map(|s| (*s).into()).collect(),
        })
    };
    w.rejected("cur", reorder(&["i3", "i1"]), "invalid_input");
    w.rejected("cur", reorder(&["i3", "i1", "i1"]), "invalid_input");
    w.rejected("cur", reorder(&["i3", "i1", "i9"]), "invalid_input");
    let applied = w.ok("sam", reorder(&["i3", "i1", "i2"]));
    assert_eq!(gallery(&w, "L"), ["i3", "i1", "i2"]);
    assert!(matches!(&applied.events[0].kind, Some(Kind::ImagesReordered(v)) if v.images[0].position == 0));
    assert!(w.ok("sam", reorder(&["i3", "i1", "i2"])).events.is_empty());
    // Deleting keeps the bytes referenced while another image holds them.
    let delete = |id: &str| Body::DeleteImage(pb::DeleteImage { lot_id: "L".into(), image_id: id.into() });
    w.ok("cur", delete("i3"));
    assert!(w.ledger.image_referenced(&"a".repeat(64)));
    w.ok("cur", delete("i1"));
    assert!(!w.ledger.image_referenced(&"a".repeat(64)));
    w.rejected("cur", delete("i1"), "image_not_found");
    assert_eq!(w.ledger.image("i2").map(|v| v.position), Some(0));
    assert!(w.ledger.image("i1").is_none());
    // The id is free again once deleted, on any lot.
    w.ok("cur", image("M", "i1", 'd'));
}

#[test]
fn a_gallery_has_a_bound() {
    let mut w = world();
    for i in 0..limits::LOT_IMAGES_MAX {
        w.ok("cur", image("L", &format!("i{i}"), 'a'));
    }
    w.rejected("cur", image("L", "one-more", 'a'), "content_limit_reached");
}

#[test]
fn content_survives_a_snapshot_and_replays_to_the_same_digest() {
    let script = |w: &mut World| {
        w.ok("cur", put("art", "Art", ""));
        w.ok("cur", put("oil", "Oils", "art"));
        w.ok(
            "cur",
            Body::SetLotCategories(pb::SetLotCategories { lot_id: "L".into(), category_ids: vec!["oil".into()] }),
        );
        w.ok("sam", attrs("L", &[("medium", "oil"), ("year", "1962")]));
        w.ok("ana", comment("L", "c1", "first"));
        w.ok("ben", comment("L", "c2", "second"));
        w.ok("ana", Body::DeleteComment(pb::DeleteComment { lot_id: "L".into(), comment_id: "c1".into() }));
        w.ok("cai", comment("L", "c3", "third"));
        w.ok("cur", image("L", "i1", 'a'));
        w.ok("cur", image("L", "i2", 'b'));
    };
    let mut a = world();
    script(&mut a);
    let mut b = world();
    script(&mut b);
    assert_eq!(a.ledger.digest(), b.ledger.digest());
    let restored = Ledger::decode_snapshot(&a.ledger.encode_snapshot()).unwrap();
    assert_eq!(restored, a.ledger);
    assert_eq!(restored.digest(), a.ledger.digest());
    let order: Vec<&str> = restored.lot("L").unwrap().content.comments.iter().map(|c| c.comment_id.as_str()).collect();
    assert_eq!(order, ["c2", "c3"]);
    // The restored ledger keeps its rules: ids and counters carry on.
    let mut w = World { ledger: restored, at: a.at };
    w.rejected("cur", image("L", "i1", 'c'), "image_exists");
    let applied = w.ok("cur", attrs("L", &[("height", "90 cm")]));
    assert!(matches!(&applied.events[0].kind, Some(Kind::AttributesAdded(v)) if v.attributes[0].attribute_id == "a2"));
    // A lot without content encodes as it did before content existed.
    let mut with_lot = World::new();
    with_lot.ok("cur", Body::CreateLot(common::lot("P", 10_000, None, 0)));
    let snap = with_lot.ledger.to_snapshot();
    assert!(snap.lots[0].content.is_none());
}

#[test]
fn a_damaged_category_tree_is_refused_on_restore() {
    let mut w = world();
    w.ok("cur", put("a", "A", ""));
    w.ok("cur", put("b", "B", "a"));
    let mut snap = w.ledger.to_snapshot();
    // Make a loop a -> b -> a, which no command can.
    snap.categories[0].parent_id = "b".into();
    assert!(Ledger::from_snapshot(snap).is_err());
}
