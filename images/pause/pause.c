/* The pod sandbox's process ("pause"): holds the pod's namespaces open and does nothing
 * else. containerd's CRI plugin runs it as each pod's first container; the local node
 * cannot pull registry.k8s.io/pause, so `make images` builds this one (statically linked,
 * so its image is the binary alone). It reaps zombies, as PID 1 must, and exits on
 * SIGINT/SIGTERM. */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) { _exit(sig == SIGTERM ? 0 : 128 + sig); }

static void reap(int sig) {
  (void)sig;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
}

int main(void) {
  struct sigaction on_stop = {.sa_handler = stop};
  struct sigaction on_child = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP};
  sigaction(SIGINT, &on_stop, NULL);
  sigaction(SIGTERM, &on_stop, NULL);
  sigaction(SIGCHLD, &on_child, NULL);
  for (;;) pause();
}
