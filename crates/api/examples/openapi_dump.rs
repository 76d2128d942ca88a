//! Prints the API's OpenAPI document (`cargo run -p deskpool-api --example openapi_dump`).
fn main() {
    println!("{}", deskpool_api::openapi().to_pretty_json().unwrap());
}
