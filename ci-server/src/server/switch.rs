//! [`AppSwitch`]: the HTTP application of the server's current role, swapped
//! when it takes over or steps down while the listener stays open.

use std::sync::{Arc, PoisonError, RwLock};

use poem::endpoint::BoxEndpoint;
use poem::{Endpoint, EndpointExt, Request, Response};

/// An endpoint that hands every request to the application set last.
///
/// Requests already being answered finish on the application they started
/// on; an event stream of an application that was swapped out ends when its
/// own stop signal says so.
#[derive(Clone)]
pub(crate) struct AppSwitch {
    current: Arc<RwLock<Arc<BoxEndpoint<'static>>>>,
}

impl AppSwitch {
    /// A switch that serves `app` until [`set`](Self::set) is called.
    pub(crate) fn new(app: impl Endpoint + 'static) -> Self {
        Self {
            current: Arc::new(RwLock::new(Self::boxed(app))),
        }
    }

    /// Serves `app` from the next request on.
    pub(crate) fn set(&self, app: impl Endpoint + 'static) {
        let app = Self::boxed(app);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = app;
    }

    fn boxed(app: impl Endpoint + 'static) -> Arc<BoxEndpoint<'static>> {
        Arc::new(app.map_to_response().boxed())
    }
}

impl Endpoint for AppSwitch {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Response> {
        let app = Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner));
        app.call(req).await
    }
}
