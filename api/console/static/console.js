// The console's few behaviours: confirm before drastic actions, and send the session's CSRF
// token with every htmx request. Pages work without it (forms post as usual).
document.addEventListener("submit", function (event) {
  var button = event.submitter;
  var message = button && button.getAttribute("data-confirm");
  if (message && !window.confirm(message)) {
    event.preventDefault();
  }
});
document.addEventListener("htmx:configRequest", function (event) {
  var token = document.body.getAttribute("data-csrf");
  if (token) {
    event.detail.headers["X-CSRF-Token"] = token;
  }
});
