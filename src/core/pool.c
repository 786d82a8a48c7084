/* pool.c — a persistent thread pool: workers sleep on a condition variable between jobs, a job is
 * split into tasks taken from an atomic counter, and the caller works on the job too. Nested calls
 * (pool_run from inside a task) run serially, so kernels may call each other freely. */
#include <pthread.h>
#include <stdatomic.h>
#include "core/core.h"

#define POOL_MAX 256

typedef struct pool {
    int n;                      /* total threads including the caller */
    pthread_t th[POOL_MAX];
    pthread_mutex_t mu;
    pthread_cond_t wake, done;
    uint64_t generation;        /* bumped for each job */
    int running;                /* workers still inside the current job */
    int quit;
    /* the current job */
    pool_fn fn;
    void *arg;
    int n_tasks;
    atomic_int next;
} pool;

static pool g_pool;
static int g_pool_started = 0;
static _Thread_local int t_in_task = 0;
static _Thread_local int t_thread = 0;  /* this thread's index in the pool (0 = a caller) */
static pthread_mutex_t g_run_mu = PTHREAD_MUTEX_INITIALIZER; /* one job at a time */

/* Take tasks until none are left. */
static void pool_drain(pool *p, int thread) {
    for (;;) {
        int t = atomic_fetch_add(&p->next, 1);
        if (t >= p->n_tasks) break;
        p->fn(p->arg, t, thread);
    }
}

typedef struct { pool *p; int id; } worker_arg;
static worker_arg g_wargs[POOL_MAX];

static void *worker_main(void *va) {
    worker_arg *wa = va;
    pool *p = wa->p;
    uint64_t seen = 0;
    t_in_task = 1;
    t_thread = wa->id;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->quit && p->generation == seen) pthread_cond_wait(&p->wake, &p->mu);
        if (p->quit) break;
        seen = p->generation;
        pthread_mutex_unlock(&p->mu);
        pool_drain(p, wa->id);
        pthread_mutex_lock(&p->mu);
        if (--p->running == 0) pthread_cond_signal(&p->done);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

static void pool_stop(void) {
    if (!g_pool_started) return;
    pool *p = &g_pool;
    pthread_mutex_lock(&p->mu);
    p->quit = 1;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n; i++) pthread_join(p->th[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->wake);
    pthread_cond_destroy(&p->done);
    g_pool_started = 0;
}

static void pool_start(int n) {
    pool *p = &g_pool;
    if (n <= 0) n = cpu_count();
    if (n > POOL_MAX) n = POOL_MAX;
    p->n = n;
    p->quit = 0;
    p->generation = 0;
    p->running = 0;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->done, NULL);
    for (int i = 1; i < n; i++) {
        g_wargs[i].p = p;
        g_wargs[i].id = i;
        if (pthread_create(&p->th[i], NULL, worker_main, &g_wargs[i]) != 0) { p->n = i; break; }
    }
    g_pool_started = 1;
    static int registered = 0;
    if (!registered) { atexit(pool_stop); registered = 1; }
}

void pool_set_threads(int n) {
    pthread_mutex_lock(&g_run_mu);
    pool_stop();
    pool_start(n);
    pthread_mutex_unlock(&g_run_mu);
}

int pool_threads(void) {
    if (!g_pool_started) pool_set_threads(0);
    return g_pool.n;
}

void pool_run(int n_tasks, pool_fn fn, void *arg) {
    if (n_tasks <= 0) return;
    if (t_in_task || n_tasks == 1) {           /* nested or trivial: run here, as this thread */
        for (int t = 0; t < n_tasks; t++) fn(arg, t, t_thread);
        return;
    }
    if (!g_pool_started) pool_set_threads(0);
    pthread_mutex_lock(&g_run_mu);
    pool *p = &g_pool;
    if (p->n == 1) {
        pthread_mutex_unlock(&g_run_mu);
        t_in_task = 1;
        for (int t = 0; t < n_tasks; t++) fn(arg, t, 0);
        t_in_task = 0;
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->arg = arg;
    p->n_tasks = n_tasks;
    atomic_store(&p->next, 0);
    p->running = p->n - 1;
    p->generation++;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);

    t_in_task = 1;
    pool_drain(p, 0);
    t_in_task = 0;

    pthread_mutex_lock(&p->mu);
    while (p->running > 0) pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
    pthread_mutex_unlock(&g_run_mu);
}
