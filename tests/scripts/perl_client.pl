#!/usr/bin/perl
# Gearman client for tests (Gearman::Client).  Prints one JSON object.  Usage:
#   perl perl_client.pl PORT do normal|high|low FN DATA [UNIQ] [exceptions]
#   perl perl_client.pl PORT bg normal|high|low FN DATA [UNIQ]
#   perl perl_client.pl PORT status HANDLE
#   perl perl_client.pl PORT many FN N
use strict;
use warnings;
use Gearman::Client;
use JSON::PP;

my ($port, $mode, @args) = @ARGV;
my $json = JSON::PP->new->canonical;

sub _val { my $v = shift; return ref $v ? $$v : $v; }
my $out;

if ($mode eq 'do') {
    my ($prio, $fn, $data, $uniq, $exc) = @args;
    my $client = Gearman::Client->new(job_servers => ["127.0.0.1:$port"],
                                      exceptions => ($exc ? 1 : 0));
    my @events;
    my %opts = (
        priority    => $prio,
        timeout     => 20,
        on_status   => sub { push @events, ["status", @_]; },
        on_warning  => sub { push @events, ["warning", _val($_[0])]; },
        on_data     => sub { push @events, ["data", _val($_[0])]; },
        on_fail     => sub { push @events, ["fail"]; },
        on_exception => sub { push @events, ["exception", _val($_[0])]; },
    );
    $opts{uniq} = $uniq if defined $uniq && length $uniq;
    my $ref = $client->do_task($fn, $data, \%opts);
    $out = { result => (defined $ref ? $$ref : undef), events => \@events };
} elsif ($mode eq 'bg') {
    my ($prio, $fn, $data, $uniq) = @args;
    my $client = Gearman::Client->new(job_servers => ["127.0.0.1:$port"]);
    my %opts = (priority => $prio);
    $opts{uniq} = $uniq if defined $uniq && length $uniq;
    $out = { handle => $client->dispatch_background($fn, $data, \%opts) };
} elsif ($mode eq 'status') {
    my $client = Gearman::Client->new(job_servers => ["127.0.0.1:$port"]);
    my $st = $client->get_status("127.0.0.1:$port//" . $args[0]);
    $out = $st ? { known => ($st->known ? 1 : 0), running => ($st->running ? 1 : 0),
                   progress => $st->progress } : { status => undef };
} elsif ($mode eq 'many') {
    my ($fn, $n) = @args;
    my $client = Gearman::Client->new(job_servers => ["127.0.0.1:$port"]);
    my $ts = $client->new_task_set;
    my %res;
    for my $i (1 .. $n) {
        $ts->add_task($fn, "m$i", { on_complete => sub { $res{$i} = ${ $_[0] }; } });
    }
    $ts->wait(timeout => 30);
    $out = { results => \%res };
} else {
    die "unknown mode $mode\n";
}
print $json->encode($out), "\n";
