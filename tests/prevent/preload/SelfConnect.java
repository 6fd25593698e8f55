// Java (blocking java.net.Socket; the JVM connects an IPv6 socket to an IPv4-mapped address):
// prints "self-connected read-back=..." if its own bytes come back, "refused ..." or
// "connected".
import java.io.InputStream;
import java.net.ConnectException;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.net.SocketTimeoutException;

public class SelfConnect {
    public static void main(String[] args) throws Exception {
        try (Socket socket = new Socket()) {
            socket.connect(new InetSocketAddress("127.0.0.1", Integer.parseInt(args[0])));
            socket.getOutputStream().write("ping-from-java".getBytes("UTF-8"));
            socket.setSoTimeout(2000);
            byte[] buffer = new byte[64];
            InputStream in = socket.getInputStream();
            try {
                int count = in.read(buffer);
                System.out.println("self-connected read-back=" + new String(buffer, 0, Math.max(count, 0), "UTF-8"));
            } catch (SocketTimeoutException e) {
                System.out.println("connected");
            }
        } catch (ConnectException e) {
            System.out.println("refused " + e.getMessage());
        }
    }
}
