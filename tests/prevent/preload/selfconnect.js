// Node (libuv: a non-blocking connect): connect to 127.0.0.1:PORT, send a line, and print
// "read-back=..." if the bytes come back (a self-connect), "connected" if a server answers
// otherwise, or "error CODE".
const net = require("net");
const port = Number(process.argv[2]);
const sock = net.connect({ host: "127.0.0.1", port });
const timer = setTimeout(() => {
  console.log("connected");
  sock.destroy();
}, 2000);
sock.on("connect", () => sock.write("ping-from-node"));
sock.on("data", (data) => {
  console.log("read-back=" + data);
  clearTimeout(timer);
  sock.destroy();
});
sock.on("error", (error) => {
  console.log("error " + error.code);
  clearTimeout(timer);
});
