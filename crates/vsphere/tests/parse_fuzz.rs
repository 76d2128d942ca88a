//! The response parser never panics: arbitrary bytes and mutated captures give Ok or Err.

use deskpool_vsphere::__private::parse_any;
use proptest::prelude::*;

const CAPTURES: &[&[u8]] = &[
    include_bytes!("fixtures/00024-RetrieveServiceContent-resp.xml"),
    include_bytes!("fixtures/00028-RetrievePropertiesEx-resp.xml"),
    include_bytes!("fixtures/00036-WaitForUpdatesEx-resp.xml"),
    include_bytes!("fixtures/00044-Fetch-resp.xml"),
    include_bytes!("fixtures/00056-Fetch-resp.xml"),
    include_bytes!("fixtures/00059-Fetch-resp.xml"),
];

#[derive(Debug, Clone)]
enum Mutation {
    Truncate(usize),
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (
            any::<usize>(),
            prop_oneof![
                prop::collection::vec(any::<u8>(), 1..8),
                prop::sample::select(vec![
                    b"<".to_vec(),
                    b"</returnval>".to_vec(),
                    b"<val xsi:type=\"".to_vec(),
                    b"&amp;".to_vec(),
                    b"&#xFFFFFF;".to_vec(),
                    b"<![CDATA[".to_vec(),
                    b" type=\"".to_vec(),
                    b"<objects><obj>".to_vec(),
                ]),
            ]
        )
            .prop_map(|(i, s)| Mutation::Insert(i, s)),
        (any::<usize>(), 1usize..64).prop_map(|(i, n)| Mutation::Delete(i, n)),
    ]
}

fn apply(mut doc: Vec<u8>, muts: &[Mutation]) -> Vec<u8> {
    for m in muts {
        let len = doc.len().max(1);
        match m {
            Mutation::Truncate(i) => doc.truncate(i % len),
            Mutation::Flip(i, b) => {
                if !doc.is_empty() {
                    let i = i % doc.len();
                    doc[i] ^= b | 1;
                }
            }
            Mutation::Insert(i, s) => {
                let i = i % (doc.len() + 1);
                doc.splice(i..i, s.iter().copied());
            }
            Mutation::Delete(i, n) => {
                if !doc.is_empty() {
                    let i = i % doc.len();
                    let end = (i + n).min(doc.len());
                    doc.drain(i..end);
                }
            }
        }
    }
    doc
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = parse_any(&bytes);
    }

    #[test]
    fn mutated_captures_never_panic(which in 0..CAPTURES.len(), muts in prop::collection::vec(mutation(), 1..6)) {
        let doc = apply(CAPTURES[which].to_vec(), &muts);
        let _ = parse_any(&doc);
    }
}

#[test]
fn unmutated_captures_parse() {
    for doc in CAPTURES.iter().take(4) {
        parse_any(doc).unwrap();
    }
}
