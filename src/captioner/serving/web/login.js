// Carries the page the user came from through the login form, and says when a token was wrong.
const query = new URLSearchParams(location.search);
const next = query.get("next") || "/";
document.getElementById("next").value = next.startsWith("/") && !next.startsWith("//") ? next : "/";
if (query.get("failed")) {
  document.getElementById("status").textContent = "That token is not right. Check it and try again.";
}
