//! The on-disk records generated from `proto/internal/` read the bytes the hand-written
//! prost structs they replaced wrote: each byte string below was encoded by the old
//! structs (captured before the move), and must decode into the same values and encode
//! back to the same bytes. A changed field number or type fails here before it makes
//! existing data files unreadable.

use aicore_proto::aicore::quest_system::v1::{PlayerQuest, QuestState};
use aicore_proto::internal::{auth, payment, quest_system};
use prost::Message;

fn bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect()
}

/// Decodes `hex` as `M`, checks it equals `want`, and that `want` encodes to `hex` again.
fn same_layout<M: Message + Default + PartialEq + std::fmt::Debug>(hex: &str, want: M) {
    let old = bytes(hex);
    let got = M::decode(old.as_slice()).expect("the old bytes decode");
    assert_eq!(got, want);
    assert_eq!(want.encode_to_vec(), old, "encodes to the old bytes");
}

fn account() -> auth::AccountRecord {
    auth::AccountRecord {
        account_id: "acc_1".into(),
        username: "Ann".into(),
        display_name: "Ann A.".into(),
        roles: vec!["player".into(), "admin".into()],
        created_ms: 1_700_000_000_123,
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
    }
}

const ACCOUNT: &str = "0a056163635f311203416e6e1a06416e6e20412e2206706c61796572220561646d696e28fbd095ffbc31322c246172676f6e32696424763d3139246d3d31393435362c743d322c703d3124633246736441246147467a6141";

#[test]
fn account_records_keep_their_layout() {
    same_layout(ACCOUNT, account());
}

#[test]
fn account_rows_with_the_retired_lockout_fields_still_read() {
    // Tags 7 and 8 (failure counter, lock) as rows written before the login throttle
    // carry them: ignored.
    let old = bytes(&format!("{ACCOUNT}3805" /* 7: 5 */));
    let old = [old, vec![0x40, 0xe8, 0x07] /* 8: 1000 */].concat();
    assert_eq!(
        auth::AccountRecord::decode(old.as_slice()).expect("decodes"),
        account()
    );
}

#[test]
fn token_session_and_throttle_records_keep_their_layout() {
    same_layout(
        "080212057365735f311a056163635f3120a0c7ccffbc312801",
        auth::TokenRecord {
            kind: auth::TokenKind::Refresh as i32,
            session_id: "ses_1".into(),
            account_id: "acc_1".into(),
            expires_ms: 1_700_000_900_000,
            used: true,
        },
    );
    same_layout(
        "0a057365735f3112056163635f3118fbd095ffbc3120e0a499ffbc3128fbe090d3c631320867616d652f312e3038fbffffffffffffffff014220abababababababababababababababababababababababababababababababab",
        auth::SessionRecord {
            session_id: "ses_1".into(),
            account_id: "acc_1".into(),
            created_ms: 1_700_000_000_123,
            last_used_ms: 1_700_000_060_000,
            refresh_expires_ms: 1_702_592_000_123,
            user_agent: "game/1.0".into(),
            revoked_ms: -5,
            refresh_hash: vec![0xab; 32],
        },
    );
    same_layout(
        "080710a0dd9bffbc3118f4d395ffbc312080bcaaa2b9312880adf180bd31",
        auth::ThrottleRecord {
            failures: 7,
            locked_until_ms: 1_700_000_100_000,
            last_attempt_ms: 1_700_000_000_500,
            last_success_ms: 1_699_000_000_000,
            expires_ms: 1_700_003_600_000,
        },
    );
}

#[test]
fn wallet_and_ledger_records_keep_their_layout() {
    same_layout(
        "08d6ffffffffffffffff01120b0880e2cfaa0610c0a9d33a",
        payment::Wallet {
            balance: -42,
            updated_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 123_000_000,
            }),
        },
    );
    same_layout(
        "0880b4c4c321",
        payment::Wallet {
            balance: 9_000_000_000,
            updated_at: None,
        },
    );
    same_layout("08ac02", payment::LedgerMeta { next_seq: 300 });
}

#[test]
fn quest_progress_entries_keep_their_layout() {
    same_layout(
        "0a0c1204736c617918022002300110011a0474785f311a0474785f32220501020300ff",
        quest_system::Entry {
            quest: Some(PlayerQuest {
                quest_id: "slay".into(),
                quest_version: 2,
                state: QuestState::Active as i32,
                completions: 1,
                ..Default::default()
            }),
            completing: true,
            reward_transaction_ids: vec!["tx_1".into(), "tx_2".into()],
            recent_key: vec![1, 2, 3, 0, 255],
        },
    );
}
