//! A thread that ends while home of one context and holding another: the
//! thread layer's exit hook reaches the context layer through the hooks the
//! context layer registered (thread.rs must not name it), so this test lives
//! above both.

use aioctx::{thread, Context};

#[test]
fn an_ended_thread_gives_up_its_homes_and_is_named_while_it_holds() {
    let home = Context::new("ended-home").unwrap();
    let held = Context::new("ended-held").unwrap();
    let (h, k) = (home.clone(), held.clone());
    let token = std::thread::Builder::new()
        .name("ender".into())
        .spawn(move || {
            h.claim().unwrap();
            k.acquire().unwrap();
            thread::current()
        })
        .unwrap()
        .join()
        .unwrap();
    assert!(!home.has_home(), "disowned when its thread ended");
    home.claim().unwrap();
    assert_eq!(held.lock().owner(), token, "still held by the ended thread");
    assert_eq!(held.lock().depth(), 0, "by nobody else");
    let who = thread::describe(token);
    assert!(who.contains("'ender'") && who.contains("(exited)"), "{who}");
}
