//! An account and its first key are created together or not at all: a key that cannot be
//! stored leaves no account behind (whose name a retry would find taken), on both engines.

mod common;

use common::{Data, Engine};
use hookline::model::Plan;
use hookline::store::{Location, Store};

/// Makes every insert of an API key fail, as a full disk or a lost connection would.
async fn break_key_inserts(location: &Location, broken: bool) {
    match location {
        Location::Sqlite(dir) => {
            let conn = rusqlite::Connection::open(dir.join("hookline.db")).unwrap();
            conn.busy_timeout(std::time::Duration::from_secs(10))
                .unwrap();
            conn.execute_batch(if broken {
                "CREATE TRIGGER no_keys BEFORE INSERT ON api_keys
                 BEGIN SELECT RAISE(FAIL, 'no key may be stored'); END;"
            } else {
                "DROP TRIGGER no_keys;"
            })
            .unwrap();
        }
        Location::Postgres(url) => {
            use sqlx::Connection as _;
            let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
            let sql = if broken {
                "CREATE FUNCTION no_keys() RETURNS trigger LANGUAGE plpgsql AS
                   $$ BEGIN RAISE EXCEPTION 'no key may be stored'; END $$;
                 CREATE TRIGGER no_keys BEFORE INSERT ON api_keys
                   FOR EACH ROW EXECUTE FUNCTION no_keys();"
            } else {
                "DROP TRIGGER no_keys ON api_keys; DROP FUNCTION no_keys();"
            };
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut conn)
                .await
                .unwrap();
        }
    }
}

async fn an_account_is_created_with_its_key_or_not_at_all(engine: Engine) {
    let data = Data::fresh(&engine).await;
    let store = Store::open(&data.location).await.unwrap();
    break_key_inserts(&data.location, true).await;
    let failed = hookline::accounts::create(&store, "halfway", Plan::Pro).await;
    assert!(failed.is_err(), "{failed:?}");
    assert!(
        store
            .account_by_name("halfway".into())
            .await
            .unwrap()
            .is_none(),
        "an account without a key was left behind"
    );
    // Once keys can be stored again, the same name is free.
    break_key_inserts(&data.location, false).await;
    let (account, key) = hookline::accounts::create(&store, "halfway", Plan::Pro)
        .await
        .unwrap();
    assert_eq!(account.name, "halfway");
    assert!(key.starts_with("hk_"), "{key}");
}

on_both_engines!(an_account_is_created_with_its_key_or_not_at_all);
